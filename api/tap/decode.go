package tap

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxLine is the longest event line a [Decoder] accepts unless told
// otherwise: far above any real event (headers included), small enough that a
// broken or hostile stream cannot make a reader hold much memory.
const DefaultMaxLine = 1 << 20

// ErrLineTooLong is returned by [Decoder.Decode] for a line longer than the
// decoder's limit.
var ErrLineTooLong = errors.New("tap: event line too long")

// ErrVersion is returned by [Decoder.Decode] for an event of a format
// version this package does not know.
var ErrVersion = errors.New("tap: unsupported event version")

// Decoder reads the events of an NDJSON tap stream.
type Decoder struct {
	s   *bufio.Scanner
	max int
}

// NewDecoder returns a Decoder reading from r that accepts lines up to
// maxLine bytes; maxLine <= 0 means [DefaultMaxLine].
func NewDecoder(r io.Reader, maxLine int) *Decoder {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, min(maxLine, 64<<10)), maxLine)
	return &Decoder{s: s, max: maxLine}
}

// Decode reads the next event into ev, skipping empty lines. It returns
// io.EOF at the end of the stream, [ErrLineTooLong] for an oversized line,
// [ErrVersion] for an event of an unknown version, and an error naming the
// problem for a line that is not an event. After an error other than a
// malformed or unknown-version line, the stream cannot be read further.
func (d *Decoder) Decode(ev *Event) error {
	for d.s.Scan() {
		line := bytes.TrimSpace(d.s.Bytes())
		if len(line) == 0 {
			continue
		}
		*ev = Event{}
		if err := json.Unmarshal(line, ev); err != nil {
			return fmt.Errorf("tap: malformed event: %w", err)
		}
		switch {
		case ev.V != Version:
			return fmt.Errorf("%w %d (this reader knows %d)", ErrVersion, ev.V, Version)
		case ev.Type == "":
			return errors.New("tap: malformed event: no type")
		case !validTime(ev.TS):
			return errors.New("tap: malformed event: ts out of range")
		}
		return nil
	}
	if err := d.s.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%w (limit %d bytes)", ErrLineTooLong, d.max)
		}
		return err
	}
	return io.EOF
}
