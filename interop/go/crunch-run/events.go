package main

import (
	"bytes"
	"encoding/json"
	"io"
	"sync"
)

// eventSink receives the events that tests and the demo wait for.
type eventSink interface {
	// emit records one event; kv alternates field names (strings) and JSON-encodable values.
	emit(name string, kv ...interface{})
}

// jsonEvents writes each event as one JSON object per line, "event" first.
type jsonEvents struct {
	mu sync.Mutex
	w  io.Writer
}

func newJSONEvents(w io.Writer) *jsonEvents {
	return &jsonEvents{w: w}
}

func (e *jsonEvents) emit(name string, kv ...interface{}) {
	var buf bytes.Buffer
	buf.WriteString(`{"event":`)
	writeJSON(&buf, name)
	for i := 0; i+1 < len(kv); i += 2 {
		key, _ := kv[i].(string)
		buf.WriteByte(',')
		writeJSON(&buf, key)
		buf.WriteByte(':')
		writeJSON(&buf, kv[i+1])
	}
	buf.WriteString("}\n")
	// One Write per line under the lock so concurrent events never interleave.
	e.mu.Lock()
	defer e.mu.Unlock()
	e.w.Write(buf.Bytes())
}

func writeJSON(buf *bytes.Buffer, v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(err.Error())
	}
	buf.Write(b)
}
