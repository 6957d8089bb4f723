package clh

// The request and response bodies vmpod exchanges with Cloud Hypervisor's
// REST API (v40 and later), written from the schemas of its OpenAPI
// document, vmm/src/api/openapi/cloud-hypervisor.yaml. Only the fields vmpod
// sets are here; every optional one is omitted when empty, so that CH
// applies its own default.

// vmConfig is the body of vm.create (schema VmConfig; payload is required).
type vmConfig struct {
	CPUs    *cpusConfig    `json:"cpus,omitempty"`
	Memory  *memoryConfig  `json:"memory,omitempty"`
	Payload payloadConfig  `json:"payload"`
	Net     []netConfig    `json:"net,omitempty"`
	RNG     *rngConfig     `json:"rng,omitempty"`
	FS      []fsConfig     `json:"fs,omitempty"`
	Serial  *consoleConfig `json:"serial,omitempty"`
	Console *consoleConfig `json:"console,omitempty"`
	Vsock   *vsockConfig   `json:"vsock,omitempty"`
}

// payloadConfig is what the guest boots (schema PayloadConfig).
type payloadConfig struct {
	Kernel    string `json:"kernel,omitempty"`
	Cmdline   string `json:"cmdline,omitempty"`
	Initramfs string `json:"initramfs,omitempty"`
}

// cpusConfig sizes the vCPUs (schema CpusConfig; both counts required,
// minimum 1).
type cpusConfig struct {
	BootVCPUs int `json:"boot_vcpus"`
	MaxVCPUs  int `json:"max_vcpus"`
}

// memoryConfig sizes guest memory in bytes (schema MemoryConfig; size
// required). Shared makes it a shareable mapping: vhost-user daemons
// (virtiofsd) read it directly.
type memoryConfig struct {
	Size   int64 `json:"size"`
	Shared bool  `json:"shared,omitempty"`
}

// netConfig is one virtio-net device (schema NetConfig): a tap by name in
// vm.create, or by descriptor in vm.add-net, where the descriptor travels
// beside the body (SCM_RIGHTS) and never in it.
type netConfig struct {
	Tap       string `json:"tap,omitempty"`
	MAC       string `json:"mac,omitempty"`
	MTU       int    `json:"mtu,omitempty"`
	NumQueues int    `json:"num_queues,omitempty"`
	ID        string `json:"id,omitempty"`
}

// rngConfig is the virtio-rng device (schema RngConfig; src required).
type rngConfig struct {
	Src string `json:"src"`
}

// fsConfig is a virtio-fs device served by a vhost-user daemon (schema
// FsConfig; tag, socket, num_queues and queue_size required).
type fsConfig struct {
	Tag       string `json:"tag"`
	Socket    string `json:"socket"`
	NumQueues int    `json:"num_queues"`
	QueueSize int    `json:"queue_size"`
	ID        string `json:"id,omitempty"`
}

// Console modes (schema ConsoleMode).
const (
	consoleOff      = "Off"
	consoleFileMode = "File"
)

// consoleConfig is the serial port or the virtio console (schemas
// SerialConfig and ConsoleConfig; mode required).
type consoleConfig struct {
	Mode string `json:"mode"`
	File string `json:"file,omitempty"`
}

// vsockConfig is CH's hybrid vsock (schema VsockConfig; cid (minimum 3)
// and socket required).
type vsockConfig struct {
	CID    int64  `json:"cid"`
	Socket string `json:"socket"`
	ID     string `json:"id,omitempty"`
}

// VM states (schema VmState).
const (
	StateCreated    = "Created"
	StateRunning    = "Running"
	StateShutdown   = "Shutdown"
	StatePaused     = "Paused"
	StateBreakPoint = "BreakPoint"
)

// Info is what vm.info reports that vmpod uses (schema VmInfo).
type Info struct {
	// State is one of the State constants.
	State string `json:"state"`
	// MemoryActualSize is the guest's memory in bytes, when reported.
	MemoryActualSize int64 `json:"memory_actual_size,omitempty"`
}

// pingResponse is vmm.ping's answer (schema VmmPingResponse; version
// required).
type pingResponse struct {
	BuildVersion string   `json:"build_version,omitempty"`
	Version      string   `json:"version"`
	PID          int64    `json:"pid,omitempty"`
	Features     []string `json:"features,omitempty"`
}
