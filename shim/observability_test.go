package shim

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmpod/vmpod/config"
)

// pprof is off by default and, on, served on a 0600 socket.
func TestPprofSocket(t *testing.T) {
	def, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	if def.Runtime.EnablePprof || !def.Runtime.EnableMetrics {
		t.Errorf("defaults: enable_pprof %v, enable_metrics %v; want false, true", def.Runtime.EnablePprof, def.Runtime.EnableMetrics)
	}
	dir := t.TempDir()
	o := &observability{}
	path := filepath.Join(dir, PprofSocketName)
	o.serve(context.Background(), path, pprofHandler(), "pprof")
	defer o.stop()
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("pprof socket: %v, want mode 0600", err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	resp, err := client.Get("http://shim/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile") {
		t.Errorf("goroutine profile: %s %.100q", resp.Status, body)
	}
	o.stop()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}
}
