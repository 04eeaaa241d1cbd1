package main

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// agentEvent is one scheduled request of a simulated agent.
type agentEvent struct {
	at      time.Time // when the agent means to send it
	machine int32
	kind    uint8
}

// eventHeap orders events by time (container/heap).
type eventHeap []agentEvent

func (h eventHeap) Len() int           { return len(h) }
func (h eventHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h eventHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)        { *h = append(*h, x.(agentEvent)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// openLoop drives many simulated agents with few goroutines: one dispatcher
// keeps every agent's next request in a heap (a timer wheel would do too),
// hands due requests to a pool of workers and reschedules the agent at once,
// on its own clock. Sending is open-loop: an agent's next request does not
// wait for the previous answer, so a slow server gets the same offered load
// and its slowness shows up in the latency, which handlers measure from the
// scheduled time (no coordinated omission).
type openLoop struct {
	events  eventHeap
	next    func(e agentEvent) (time.Time, bool) // the agent's following request of that kind
	handle  func(ctx context.Context, e agentEvent)
	workers int
}

// run dispatches events until end (exclusive) or until ctx ends, then waits
// for the requests in flight.
func (o *openLoop) run(ctx context.Context, end time.Time) {
	heap.Init(&o.events)
	jobs := make(chan agentEvent, 1<<16)
	var wg sync.WaitGroup
	for range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range jobs {
				o.handle(ctx, e)
			}
		}()
	}
	defer func() {
		close(jobs)
		wg.Wait()
	}()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for len(o.events) > 0 {
		e := o.events[0]
		if !e.at.Before(end) {
			return
		}
		if wait := time.Until(e.at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			continue
		}
		heap.Pop(&o.events)
		if t, ok := o.next(e); ok {
			heap.Push(&o.events, agentEvent{at: t, machine: e.machine, kind: e.kind})
		}
		select {
		case jobs <- e:
		case <-ctx.Done():
			return
		}
	}
}
