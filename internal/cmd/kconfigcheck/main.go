// Command kconfigcheck fails a kernel build whose merged configuration
// lost an option a config fragment asks for, naming each such option and
// the fragment line: an option the source does not have, or one kconfig
// turned off or changed because a dependency is missing.
//
//	kconfigcheck -src <kernel source> -config <source>/.config fragment.conf...
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/vmpod/vmpod/kernel/kconfig"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kconfigcheck:", err)
		os.Exit(1)
	}
}

func run() error {
	src := flag.String("src", "", "kernel source `directory` (its Kconfig files define the options)")
	cfgPath := flag.String("config", "", "merged `.config` (default: <src>/.config)")
	flag.Parse()
	if *src == "" || flag.NArg() == 0 {
		return fmt.Errorf("usage: kconfigcheck -src <kernel source> [-config .config] fragment.conf...")
	}
	if *cfgPath == "" {
		*cfgPath = *src + "/.config"
	}
	var settings []kconfig.Setting
	for _, p := range flag.Args() {
		s, err := kconfig.ReadFragment(p)
		if err != nil {
			return err
		}
		settings = append(settings, s...)
	}
	f, err := os.Open(*cfgPath)
	if err != nil {
		return err
	}
	defer f.Close()
	cfg, err := kconfig.ParseConfig(f)
	if err != nil {
		return err
	}
	syms, err := kconfig.Symbols(*src)
	if err != nil {
		return err
	}
	if err := kconfig.Check(settings, cfg, syms); err != nil {
		return err
	}
	fmt.Printf("kconfigcheck: %d options from %d fragments applied\n", len(settings), flag.NArg())
	return nil
}
