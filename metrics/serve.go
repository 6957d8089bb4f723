package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// SocketName is the metrics socket in a sandbox's state directory.
const SocketName = "metrics.sock"

// scrapeTimeout bounds one scrape of the socket; the guest's part has
// its own, shorter bound (the Sandbox's guest timeout).
const scrapeTimeout = 10 * time.Second

// Handler serves the sandbox's metrics in the Prometheus text format at
// /metrics.
func (s *Sandbox) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       scrapeTimeout,
	}))
	return mux
}

// ServeUnix serves h on a Unix socket at path, for host root only (0600),
// until stop is called, which also removes the socket.
func ServeUnix(path string, h http.Handler) (stop func(), err error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		// pprof's profile and trace take their seconds parameter (30 s by
		// default) to answer.
		WriteTimeout: 2 * time.Minute,
		IdleTimeout:  time.Minute,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // ErrServerClosed once stop is called
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
		os.Remove(path)
	}, nil
}
