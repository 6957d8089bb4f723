// Package chtest is a test double of Cloud Hypervisor's REST API server,
// written from its OpenAPI document (v40 and later): it serves the
// endpoints vmpod calls on a Unix socket, holds every request body to the
// document's shapes (required fields, types, enums; unknown fields are an
// error), answers with CH's status codes and error bodies (a JSON array of
// the error chain), and keeps the VM's lifecycle state so that a call out
// of order fails as it does in CH. Main runs it as a stand-in
// `cloud-hypervisor` binary.
package chtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Version is what vmm.ping reports.
const Version = "v40.0"

// maxBody bounds a request body, as CH's HTTP server does.
const maxBody = 1 << 20

// NetAdded is one vm.add-net the double accepted.
type NetAdded struct {
	Config map[string]any
	// FDs is how many descriptors came with it (SCM_RIGHTS); FDInode is
	// the inode of the first, so that a test can tell it got its tap.
	FDs     int
	FDInode uint64
}

// Server is the double's state: the VM (none until vm.create) and what it
// was told.
type Server struct {
	// RefuseBoot makes vm.boot fail as CH does when the guest cannot
	// start (an unusable kernel, say).
	RefuseBoot bool
	// OnCreate, when set, runs on vm.create before the answer (the fake
	// binary exits there to play a CH that dies during create).
	OnCreate func()
	// OnBoot runs after a successful vm.boot with the VM's configuration.
	OnBoot func(cfg map[string]any)
	// Shutdown is closed by vmm.shutdown, after its answer.
	Shutdown chan struct{}

	mu       sync.Mutex
	state    string // "" while no VM is created
	config   map[string]any
	nets     []NetAdded
	requests []string
	once     sync.Once
}

// NewServer returns a double with no VM.
func NewServer() *Server { return &Server{Shutdown: make(chan struct{})} }

// State is the VM's state ("" before vm.create).
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// Nets is what vm.add-net accepted, in order.
func (s *Server) Nets() []NetAdded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]NetAdded(nil), s.nets...)
}

// Requests lists "METHOD endpoint" of every request, in order.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// Serve answers on ln until it is closed.
func (s *Server) Serve(ln *net.UnixListener) error {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go s.serveConn(c)
	}
}

// serveConn answers the requests of one connection. The first read takes
// the descriptors that came with the request, as CH's HTTP server does.
func (s *Server) serveConn(c *net.UnixConn) {
	defer c.Close()
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*16))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	files := receivedFiles(oob[:oobn])
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(buf[:n]), c))
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, err := io.ReadAll(io.LimitReader(req.Body, maxBody+1))
		req.Body.Close()
		if err != nil {
			return
		}
		status, answer := s.handle(req.Method, req.URL.Path, body, req.ContentLength > 0 || len(body) > 0, files)
		files = nil
		writeResponse(c, status, answer)
		if req.URL.Path == "/api/v1/vmm.shutdown" && status == http.StatusNoContent {
			s.once.Do(func() { close(s.Shutdown) })
			return
		}
	}
}

func receivedFiles(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "scm-rights"))
		}
	}
	return files
}

// writeResponse answers as micro_http, CH's HTTP server, does.
func writeResponse(w io.Writer, status int, body []byte) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n", status, http.StatusText(status))
	if len(body) > 0 {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
		b.Write(body)
	} else {
		b.WriteString("\r\n")
	}
	w.Write(b.Bytes())
}

// errorBody is CH's error body: the error chain's messages, outermost
// first, as a JSON array.
func errorBody(msgs ...string) []byte {
	b, _ := json.Marshal(msgs)
	return b
}

// The chains CH answers with for the errors the double plays.
var (
	errNotFound      = []string{"Not Found"}
	errBadRequest    = []string{"Bad Request"}
	errAlreadyExists = []string{"Error from API", "The VM could not be created", "VM is already created"}
)

func notCreated(action string) []string {
	return []string{"Error from API", "The VM could not " + action, "VM is not created"}
}

// endpoint describes one route: its method, whether it takes a body and
// the body's schema.
type endpoint struct {
	method string
	body   *schema // nil: the request must have no body
}

var endpoints = map[string]endpoint{
	"vmm.ping":     {method: "GET"},
	"vmm.shutdown": {method: "PUT"},
	"vm.create":    {method: "PUT", body: vmConfig},
	"vm.boot":      {method: "PUT"},
	"vm.shutdown":  {method: "PUT"},
	"vm.pause":     {method: "PUT"},
	"vm.resume":    {method: "PUT"},
	"vm.info":      {method: "GET"},
	"vm.add-net":   {method: "PUT", body: netConfig},
}

// handle answers one request: status and body.
func (s *Server) handle(method, path string, body []byte, hasBody bool, files []*os.File) (int, []byte) {
	name, ok := strings.CutPrefix(path, "/api/v1/")
	ep, known := endpoints[name]
	s.mu.Lock()
	s.requests = append(s.requests, method+" "+name)
	s.mu.Unlock()
	if !ok || !known {
		return http.StatusNotFound, errorBody(errNotFound...)
	}
	if method != ep.method {
		return http.StatusBadRequest, errorBody(errBadRequest...)
	}
	var doc map[string]any
	if ep.body == nil {
		// CH's bodiless actions refuse a body.
		if hasBody {
			return http.StatusBadRequest, errorBody(errBadRequest...)
		}
	} else {
		if !hasBody {
			return http.StatusBadRequest, errorBody(errBadRequest...)
		}
		var err error
		if doc, err = decodeStrict(body, ep.body); err != nil {
			return http.StatusBadRequest, errorBody("Failed to deserialize JSON", err.Error())
		}
	}
	switch name {
	case "vmm.ping":
		b, _ := json.Marshal(map[string]any{"build_version": "chtest", "version": Version, "pid": os.Getpid(), "features": []string{"kvm"}})
		return http.StatusOK, b
	case "vmm.shutdown":
		return http.StatusNoContent, nil
	case "vm.create":
		return s.create(doc)
	case "vm.add-net":
		return s.addNet(doc, files)
	case "vm.info":
		return s.info()
	}
	return s.transition(name)
}

// decodeStrict decodes one JSON object, nothing after it, and checks it
// against sc.
func decodeStrict(body []byte, sc *schema) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing characters after the JSON document")
	}
	if err := sc.check("$", v); err != nil {
		return nil, err
	}
	return v.(map[string]any), nil
}

func (s *Server) create(doc map[string]any) (int, []byte) {
	if s.OnCreate != nil {
		s.OnCreate()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != "" {
		return http.StatusInternalServerError, errorBody(errAlreadyExists...)
	}
	s.state, s.config = "Created", doc
	return http.StatusNoContent, nil
}

// addNet adds a NIC: to the configuration before the boot (204), as a
// hot-plug after it (200 with the device's PCI address). Descriptors must
// come one per queue pair, as CH requires.
func (s *Server) addNet(doc map[string]any, files []*os.File) (int, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == "" {
		return http.StatusNotFound, errorBody(notCreated("add the network device")...)
	}
	queues := int64(2)
	if n, ok := doc["num_queues"].(json.Number); ok {
		queues, _ = n.Int64()
	}
	if len(files) > 0 && int64(len(files))*2 != queues {
		return http.StatusInternalServerError, errorBody("Error from API", "The network device could not be added",
			fmt.Sprintf("Number of queues (%d) does not match twice the number of descriptors (%d)", queues, len(files)))
	}
	added := NetAdded{Config: doc, FDs: len(files)}
	if len(files) > 0 {
		var st unix.Stat_t
		if err := unix.Fstat(int(files[0].Fd()), &st); err != nil {
			return http.StatusInternalServerError, errorBody("Error from API", "The network device could not be added", err.Error())
		}
		added.FDInode = st.Ino
	}
	s.nets = append(s.nets, added)
	nets, _ := s.config["net"].([]any)
	s.config["net"] = append(nets, any(doc))
	if s.state == "Created" || s.state == "Shutdown" {
		return http.StatusNoContent, nil
	}
	b, _ := json.Marshal(map[string]string{"id": fmt.Sprint(doc["id"]), "bdf": fmt.Sprintf("0000:00:%02x.0", 5+len(s.nets))})
	return http.StatusOK, b
}

func (s *Server) info() (int, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == "" {
		return http.StatusNotFound, errorBody(notCreated("get its information")...)
	}
	info := map[string]any{"config": s.config, "state": s.state}
	if mem, ok := s.config["memory"].(map[string]any); ok {
		info["memory_actual_size"] = mem["size"]
	}
	b, _ := json.Marshal(info)
	return http.StatusOK, b
}

// transitions are the lifecycle's legal moves: action → from → to.
var transitions = map[string]map[string]string{
	"vm.boot":     {"Created": "Running", "Shutdown": "Running"},
	"vm.pause":    {"Running": "Paused"},
	"vm.resume":   {"Paused": "Running"},
	"vm.shutdown": {"Running": "Shutdown", "Paused": "Shutdown"},
}

var verbs = map[string]string{"vm.boot": "boot", "vm.pause": "pause", "vm.resume": "resume", "vm.shutdown": "shut down"}

func (s *Server) transition(action string) (int, []byte) {
	s.mu.Lock()
	from := s.state
	verb := verbs[action]
	if from == "" {
		s.mu.Unlock()
		return http.StatusNotFound, errorBody(notCreated(verb)...)
	}
	to, ok := transitions[action][from]
	if !ok {
		s.mu.Unlock()
		target := map[string]string{"vm.boot": "Running", "vm.pause": "Paused", "vm.resume": "Running", "vm.shutdown": "Shutdown"}[action]
		return http.StatusInternalServerError, errorBody("Error from API", "The VM could not "+verb,
			fmt.Sprintf("Invalid VM state transition: %s to %s", from, target))
	}
	if action == "vm.boot" && s.RefuseBoot {
		s.mu.Unlock()
		return http.StatusInternalServerError, errorBody("Error from API", "The VM could not boot",
			"Error loading kernel", "Kernel is not a valid ELF or bzImage")
	}
	s.state = to
	cfg := s.config
	s.mu.Unlock()
	if action == "vm.boot" && s.OnBoot != nil {
		s.OnBoot(cfg)
	}
	return http.StatusNoContent, nil
}
