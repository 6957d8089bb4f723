package image

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// cpio mode bits (the file type part of st_mode, as newc stores it).
const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
	modeTypes   = 0o170000
)

// newcMagic starts every header of the "new ASCII" (SVR4, no checksum)
// format that the kernel's initramfs unpacker reads.
const newcMagic = "070701"

const trailerName = "TRAILER!!!"

// cpioHeader is one newc entry header. Every numeric field is written as 8
// hexadecimal digits.
type cpioHeader struct {
	Name      string
	Mode      uint32 // type and permission bits
	Ino       uint32
	Mtime     uint32
	Size      uint32
	RdevMajor uint32
	RdevMinor uint32
	Nlink     uint32
}

// cpioWriter writes a newc archive. Owner and group are always 0 so that
// the archive does not depend on who builds it.
type cpioWriter struct {
	w   *bufio.Writer
	off int64
	err error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<16)}
}

func (c *cpioWriter) write(p []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(p)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// WriteHeader writes h; exactly h.Size bytes of data must follow through
// WriteData.
func (c *cpioWriter) WriteHeader(h cpioHeader) error {
	if strings.ContainsRune(h.Name, 0) || h.Name == "" {
		return fmt.Errorf("cpio: invalid entry name %q", h.Name)
	}
	nlink := h.Nlink
	if nlink == 0 {
		nlink = 1
		if h.Mode&modeTypes == modeDir {
			nlink = 2
		}
	}
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		newcMagic, h.Ino, h.Mode, 0, 0, nlink, h.Mtime, h.Size,
		0, 0, h.RdevMajor, h.RdevMinor, len(h.Name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(h.Name))
	c.write([]byte{0})
	c.pad()
	return c.err
}

// WriteData writes an entry's data and the padding after it.
func (c *cpioWriter) WriteData(r io.Reader, size int64) error {
	if c.err != nil {
		return c.err
	}
	n, err := io.CopyN(c.w, r, size)
	c.off += n
	if err != nil {
		c.err = err
		return err
	}
	c.pad()
	return c.err
}

// Close writes the trailer and flushes; it does not close the underlying
// writer.
func (c *cpioWriter) Close() error {
	if err := c.WriteHeader(cpioHeader{Name: trailerName, Nlink: 1}); err != nil {
		return err
	}
	// The kernel is happy with any length; pad to 512 like GNU cpio does.
	if r := c.off % 512; r != 0 {
		c.write(make([]byte, 512-r))
	}
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}
