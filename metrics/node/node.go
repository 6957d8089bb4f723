// Package node gathers the metrics of every sandbox of a node, as Kata's
// kata-monitor does: it finds the sandboxes by listing the shim's state
// root, scrapes each one's metrics socket (bounded in time and size), and
// labels every sample with sandbox_id and, when the shim knows them, the
// CRI pod's pod_name and pod_namespace. A sandbox that is gone has no
// state directory, so its series disappear from the next scrape.
package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	"github.com/vmpod/vmpod/metrics"
)

// Bounds of one sandbox's scrape.
const (
	DefaultSandboxTimeout = 5 * time.Second
	// MaxScrapeBytes bounds one sandbox's exposition.
	MaxScrapeBytes = 4 << 20
	// maxSandboxes bounds the sandboxes one scrape reads.
	maxSandboxes = 4096
	// parallel bounds the sandboxes scraped at once.
	parallel = 8
)

// Labels the monitor adds.
const (
	LabelSandbox      = "sandbox_id"
	LabelPodName      = "pod_name"
	LabelPodNamespace = "pod_namespace"
)

// sandboxIDPattern is containerd's identifier syntax; other entries of
// the state root are not sandboxes.
var sandboxIDPattern = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// Scrape reads the metrics socket at sock: the Prometheus text format, at
// most MaxScrapeBytes, within ctx.
func Scrape(ctx context.Context, sock string) ([]byte, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://sandbox/metrics", nil)
	if err != nil {
		return nil, err
	}
	// Plain text: what the monitor parses and `vmpod metrics` prints.
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", sock, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxScrapeBytes+1))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", sock, err)
	}
	if len(body) > MaxScrapeBytes {
		return nil, fmt.Errorf("scrape %s: more than %d bytes", sock, MaxScrapeBytes)
	}
	return body, nil
}

// Monitor gathers the sandboxes under a state root.
type Monitor struct {
	// StateRoot is the shim's state root (one directory per sandbox).
	StateRoot string
	// SandboxTimeout bounds each sandbox's scrape (DefaultSandboxTimeout
	// if 0).
	SandboxTimeout time.Duration
}

// Gather implements prometheus.Gatherer: every sandbox's families,
// labelled, merged by name, and the monitor's own.
func (m *Monitor) Gather() ([]*dto.MetricFamily, error) {
	ids, err := m.sandboxes()
	if err != nil {
		return nil, err
	}
	timeout := m.SandboxTimeout
	if timeout <= 0 {
		timeout = DefaultSandboxTimeout
	}
	type result struct {
		id   string
		fams map[string]*dto.MetricFamily
		err  error
	}
	results := make([]result, len(ids))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			fams, err := scrapeSandbox(ctx, filepath.Join(m.StateRoot, id, metrics.SocketName), id)
			results[i] = result{id, fams, err}
		}()
	}
	wg.Wait()

	merged := map[string]*dto.MetricFamily{}
	up := &dto.MetricFamily{Name: proto.String(metrics.Namespace + "_monitor_sandbox_scrape_success"), Help: proto.String("1 when the sandbox's shim answered the monitor in time with valid metrics, else 0."), Type: dto.MetricType_GAUGE.Enum()}
	var errs []error
	for _, r := range results {
		v := 1.0
		if r.err != nil {
			v = 0
			errs = append(errs, r.err)
		}
		up.Metric = append(up.Metric, &dto.Metric{Label: []*dto.LabelPair{label(LabelSandbox, r.id)}, Gauge: &dto.Gauge{Value: proto.Float64(v)}})
		for name, f := range r.fams {
			have, ok := merged[name]
			switch {
			case !ok:
				merged[name] = f
			case have.GetType() == f.GetType():
				have.Metric = append(have.Metric, f.Metric...)
			default:
				errs = append(errs, fmt.Errorf("sandbox %s: family %s is a %v, another sandbox's a %v: dropped", r.id, name, f.GetType(), have.GetType()))
			}
		}
	}
	merged[up.GetName()] = up
	merged[metrics.Namespace+"_monitor_sandboxes"] = &dto.MetricFamily{
		Name: proto.String(metrics.Namespace + "_monitor_sandboxes"), Help: proto.String("Sandboxes with a metrics socket found under the state root."),
		Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(float64(len(ids)))}}},
	}
	out := make([]*dto.MetricFamily, 0, len(merged))
	for _, f := range merged {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	// A sandbox that failed is reported by the success metric; the
	// others are still served (promhttp.ContinueOnError).
	return out, errors.Join(errs...)
}

// sandboxes lists the sandboxes with a metrics socket.
func (m *Monitor) sandboxes() ([]string, error) {
	ents, err := os.ReadDir(m.StateRoot)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil // no sandbox ever ran here
		}
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if !e.IsDir() || !sandboxIDPattern.MatchString(e.Name()) {
			continue
		}
		if _, err := os.Stat(filepath.Join(m.StateRoot, e.Name(), metrics.SocketName)); err != nil {
			continue // metrics off, or the sandbox is starting or going
		}
		ids = append(ids, e.Name())
		if len(ids) == maxSandboxes {
			break
		}
	}
	return ids, nil
}

// scrapeSandbox scrapes one sandbox and labels its samples.
func scrapeSandbox(ctx context.Context, sock, id string) (map[string]*dto.MetricFamily, error) {
	body, err := Scrape(ctx, sock)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", id, err)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: parse metrics: %w", id, err)
	}
	var podName, podNS string
	if info := fams[metrics.Namespace+"_sandbox_info"]; info != nil && len(info.Metric) > 0 {
		for _, l := range info.Metric[0].Label {
			switch l.GetName() {
			case LabelPodName:
				podName = l.GetValue()
			case LabelPodNamespace:
				podNS = l.GetValue()
			}
		}
	}
	for _, f := range fams {
		for _, mt := range f.Metric {
			setLabel(mt, LabelSandbox, id)
			if podName != "" {
				setLabel(mt, LabelPodName, podName)
			}
			if podNS != "" {
				setLabel(mt, LabelPodNamespace, podNS)
			}
		}
	}
	return fams, nil
}

func label(name, value string) *dto.LabelPair {
	return &dto.LabelPair{Name: proto.String(name), Value: proto.String(value)}
}

// setLabel sets name=value on m, replacing a label of that name.
func setLabel(m *dto.Metric, name, value string) {
	for _, l := range m.Label {
		if l.GetName() == name {
			l.Value = proto.String(value)
			return
		}
	}
	m.Label = append(m.Label, label(name, value))
	sort.Slice(m.Label, func(i, j int) bool { return m.Label[i].GetName() < m.Label[j].GetName() })
}
