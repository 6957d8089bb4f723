// Package configenv prints vmpod's effective configuration, the embedded
// defaults merged with the file that overrides them, as TOML in which every
// key says where its value came from. It is what `vmpod env` shows.
//
// The keys and values come from config.Config by reflection on its toml
// tags, so a key added to the configuration shows up here without a change.
// Which keys the file set is decided by decoding that file again with
// BurntSushi/toml's MetaData, because config does not export it.
package configenv

import (
	"bytes"
	"encoding"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/vmpod/vmpod/config"
)

// DefaultAnnotation marks a key whose value is the embedded default.
const DefaultAnnotation = "default"

// maxFile bounds the re-read of the configuration file; config.Load has
// already refused anything larger.
const maxFile = 1 << 20

// Write prints cfg as TOML with a header naming the file it came from and,
// after each key, a comment naming its source: DefaultAnnotation or the
// file's path.
func Write(w io.Writer, cfg *config.Config) error {
	defined := func([]string) bool { return false }
	file := cfg.Source
	if file != "" && file != config.DefaultSource {
		md, err := decodeFile(file)
		if err != nil {
			return err
		}
		defined = func(key []string) bool { return md.IsDefined(key...) }
	}
	var b bytes.Buffer
	writeHeader(&b, file)
	if err := writeTable(&b, reflect.ValueOf(*cfg), nil, func(key []string) string {
		if defined(key) {
			return file
		}
		return DefaultAnnotation
	}); err != nil {
		return err
	}
	_, err := w.Write(b.Bytes())
	return err
}

func writeHeader(b *bytes.Buffer, file string) {
	b.WriteString("# vmpod effective configuration: the embedded defaults")
	if file == "" || file == config.DefaultSource {
		fmt.Fprintf(b, " alone.\n# No file: neither --config, $%s nor %s names one.\n", config.EnvConfig, config.SystemPath)
	} else {
		fmt.Fprintf(b, ", overridden by\n# %s\n", file)
	}
	b.WriteString("# Each key's comment names where its value came from.\n")
}

// decodeFile reads the configuration file again for its key metadata.
func decodeFile(path string) (toml.MetaData, error) {
	f, err := os.Open(path)
	if err != nil {
		return toml.MetaData{}, fmt.Errorf("configenv: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFile))
	if err != nil {
		return toml.MetaData{}, fmt.Errorf("configenv: reading %s: %w", path, err)
	}
	var doc map[string]any
	md, err := toml.Decode(string(data), &doc)
	if err != nil {
		return toml.MetaData{}, fmt.Errorf("configenv: %s: %w", path, err)
	}
	return md, nil
}

var textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()

// writeTable writes the keys of struct v (the table at path) and then its
// sub-tables. A struct field is a sub-table unless it marshals itself as
// text (config.Duration). A table with no keys of its own gets no header.
func writeTable(b *bytes.Buffer, v reflect.Value, path []string, source func([]string) string) error {
	t := v.Type()
	var subs []int
	first := true
	for i := range t.NumField() {
		name, ok := tomlKey(t.Field(i))
		if !ok {
			continue
		}
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && !fv.Type().Implements(textMarshaler) {
			subs = append(subs, i)
			continue
		}
		if first && len(path) > 0 {
			fmt.Fprintf(b, "\n[%s]\n", strings.Join(path, "."))
		}
		first = false
		key := append(append([]string(nil), path...), name)
		line, err := keyValue(name, fv.Interface())
		if err != nil {
			return fmt.Errorf("configenv: %s: %w", strings.Join(key, "."), err)
		}
		fmt.Fprintf(b, "%s  # %s\n", line, source(key))
	}
	for _, i := range subs {
		name, _ := tomlKey(t.Field(i))
		if err := writeTable(b, v.Field(i), append(append([]string(nil), path...), name), source); err != nil {
			return err
		}
	}
	return nil
}

func tomlKey(f reflect.StructField) (string, bool) {
	if !f.IsExported() {
		return "", false
	}
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "" || name == "-" {
		return "", false
	}
	return name, true
}

// keyValue encodes one `key = value` line with the TOML encoder, so that
// strings, arrays and durations are quoted as the decoder expects.
func keyValue(name string, val any) (string, error) {
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(map[string]any{name: val}); err != nil {
		return "", err
	}
	return strings.TrimRight(b.String(), "\n"), nil
}
