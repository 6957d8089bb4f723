package agent

import (
	"fmt"
	"testing"
)

// finishedProcess is an exec that exited and whose output was read.
func finishedProcess(done bool) *Process {
	p := &Process{exited: make(chan struct{}), pumpsDone: make(chan struct{})}
	if done {
		close(p.exited)
		close(p.pumpsDone)
	}
	return p
}

func TestForgetFinishedExecs(t *testing.T) {
	c := &Container{execs: map[string]*Process{}}
	add := func(id string, done bool) {
		c.execs[id] = finishedProcess(done)
		c.execOrder = append(c.execOrder, id)
	}
	add("running-old", false)
	for i := 0; i < maxFinishedExecs+5; i++ {
		add(fmt.Sprint("done-", i), true)
	}
	add("running-new", false)
	c.forgetFinishedExecs()
	if len(c.execs) != maxFinishedExecs+2 || len(c.execOrder) != len(c.execs) {
		t.Fatalf("kept %d execs (%d in order), want %d", len(c.execs), len(c.execOrder), maxFinishedExecs+2)
	}
	for _, id := range []string{"running-old", "running-new", fmt.Sprint("done-", maxFinishedExecs+4), "done-5"} {
		if c.execs[id] == nil {
			t.Errorf("%s forgotten", id)
		}
	}
	for i := 0; i < 5; i++ {
		if c.execs[fmt.Sprint("done-", i)] != nil {
			t.Errorf("done-%d, among the oldest finished, kept", i)
		}
	}
}
