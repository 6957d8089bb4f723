package vhostuser

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"github.com/vmpod/vmpod/vsock/virtq"
)

// Vring is one virtqueue as the frontend configured it. The device uses it
// from its own goroutine: Lock, Queue (nil while the ring is stopped,
// disabled or broken), work, Notify, Unlock. The server takes the same lock
// to start, stop or remap the ring, so the device never touches guest
// memory that is being unmapped.
type Vring struct {
	index int

	mu     sync.Mutex
	q      *virtq.Queue // guarded by mu
	call   *os.File     // guarded by mu
	broken error        // guarded by mu

	// Set by the server goroutine only.
	size     uint16
	base     uint16
	addr     VringAddr
	haveAddr bool
	enabled  bool
	kick     *os.File
	kickDone chan struct{}
	errFile  *os.File
}

// NewVring returns vring number index, stopped.
func NewVring(index int) *Vring { return &Vring{index: index} }

// Index is the vring's number.
func (v *Vring) Index() int { return v.index }

// Lock locks the vring against reconfiguration.
func (v *Vring) Lock() { v.mu.Lock() }

// Unlock unlocks it.
func (v *Vring) Unlock() { v.mu.Unlock() }

// Queue is the running queue, or nil. The caller holds the lock.
func (v *Vring) Queue() *virtq.Queue { return v.q }

// Break stops the queue after the guest corrupted it; it stays stopped
// until the frontend restarts the ring. The caller holds the lock.
func (v *Vring) Break(err error) {
	v.broken = fmt.Errorf("vring %d: %w", v.index, err)
	v.q = nil
}

// Notify interrupts the guest through the call eventfd. The caller holds
// the lock.
func (v *Vring) Notify() error {
	if v.call == nil {
		return nil
	}
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	if _, err := v.call.Write(one[:]); err != nil {
		return fmt.Errorf("vring %d: signal call eventfd: %w", v.index, err)
	}
	return nil
}

func (v *Vring) setCall(f *os.File) {
	v.mu.Lock()
	old := v.call
	v.call = f
	v.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// stopQueue stops processing and returns where the queue stopped.
func (v *Vring) stopQueue() uint16 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.q != nil {
		v.base = v.q.NextAvail()
		v.q = nil
	}
	return v.base
}

// stopKick closes the kick eventfd and waits for its watcher.
func (v *Vring) stopKick() {
	if v.kick == nil {
		return
	}
	v.kick.Close()
	<-v.kickDone
	v.kick, v.kickDone = nil, nil
}

// watchKick forwards guest kicks to the device until the eventfd closes.
func (v *Vring) watchKick(f *os.File, done chan struct{}, dev Device) {
	defer close(done)
	var buf [8]byte
	for {
		if _, err := f.Read(buf[:]); err != nil {
			return
		}
		dev.Kick(v.index)
	}
}

// close releases everything; the server is done with the ring.
func (v *Vring) close() {
	v.stopQueue()
	v.stopKick()
	v.setCall(nil)
	if v.errFile != nil {
		v.errFile.Close()
		v.errFile = nil
	}
}

// reset returns the ring to its initial state (RESET_OWNER).
func (v *Vring) reset() {
	v.close()
	v.mu.Lock()
	v.broken = nil
	v.mu.Unlock()
	v.size, v.base, v.addr, v.haveAddr, v.enabled = 0, 0, VringAddr{}, false, false
}
