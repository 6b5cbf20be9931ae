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
	r    *bufio.Reader
	max  int
	line []byte
}

// NewDecoder returns a Decoder reading from r that accepts lines up to
// maxLine bytes; maxLine <= 0 means [DefaultMaxLine].
func NewDecoder(r io.Reader, maxLine int) *Decoder {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	return &Decoder{r: bufio.NewReaderSize(r, min(maxLine, 64<<10)), max: maxLine}
}

// Decode reads the next event into ev, skipping empty lines. It returns
// io.EOF at the end of the stream, [ErrLineTooLong] for an oversized line
// (skipped without holding it: the next call reads the line after it),
// [ErrVersion] for an event of an unknown version, and an error naming the
// problem for a line that is not an event. After an error other than these,
// the stream cannot be read further.
func (d *Decoder) Decode(ev *Event) error {
	for {
		line, err := d.readLine()
		if errors.Is(err, ErrLineTooLong) {
			return fmt.Errorf("%w (limit %d bytes)", ErrLineTooLong, d.max)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			if err != nil {
				return err
			}
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
}

// readLine returns the next line, without holding more than max bytes of it:
// a longer line is read to its end, discarded, and reported as ErrLineTooLong.
// A last line without a newline comes with the error that ended the stream.
func (d *Decoder) readLine() ([]byte, error) {
	d.line = d.line[:0]
	for {
		chunk, err := d.r.ReadSlice('\n')
		if len(d.line)+len(bytes.TrimRight(chunk, "\r\n")) > d.max {
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = d.r.ReadSlice('\n')
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
			return nil, ErrLineTooLong
		}
		d.line = append(d.line, chunk...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return d.line, err
		}
	}
}
