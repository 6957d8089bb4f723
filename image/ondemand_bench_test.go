package image_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmpod/vmpod/hypervisor"
	"github.com/vmpod/vmpod/hypervisor/qemu"
	"github.com/vmpod/vmpod/image"
	"github.com/vmpod/vmpod/image/imagetest"
	"github.com/vmpod/vmpod/internal/leakcheck"
	"github.com/vmpod/vmpod/internal/testbin"
)

// BenchmarkOnDemandBootCost boots an init that powers off at once (with
// the agent riding along as a file, for a realistic size) in an initrd
// without and with the default on-demand modules: what carrying them costs
// every boot, unpacking included, under TCG.
func BenchmarkOnDemandBootCost(b *testing.B) {
	imagetest.Require(b)
	init := testbin.Build(b, "./image/internal/testinit", true)
	agent := testbin.Agent(b)
	for _, set := range []struct {
		name     string
		onDemand []string
	}{{"none", []string{}}, {"default", nil}} {
		b.Run(set.name, func(b *testing.B) {
			dir := b.TempDir()
			res, err := image.BuildInitrd(image.Options{
				Init: init, OnDemand: set.onDemand, Output: filepath.Join(dir, "initrd"),
				ExtraFiles: map[string]string{"/usr/bin/vmpod-agent": agent},
			})
			if err != nil {
				b.Fatal(err)
			}
			state := filepath.Join(dir, "state")
			leakcheck.Check(b, leakcheck.Options{Roots: []string{state}})
			cfg := hypervisor.Config{ID: "bench", Path: imagetest.QEMUPath, Kernel: imagetest.Kernel(b),
				Initrd: res.Path, StateDir: state, Accel: hypervisor.AccelTCG}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				bootToPowerOff(b, cfg)
			}
			b.ReportMetric(float64(res.Size)/(1<<20), "MiB")
		})
	}
}

func bootToPowerOff(b *testing.B, cfg hypervisor.Config) {
	b.Helper()
	q, err := qemu.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	defer q.Stop(context.Background())
	if err := q.Start(ctx); err != nil {
		b.Fatal(err)
	}
	select {
	case <-q.Done():
	case <-ctx.Done():
		b.Fatalf("guest did not power off: %s", q.ConsoleTail())
	}
	if err := q.Err(); err != nil {
		b.Fatal(err)
	}
}
