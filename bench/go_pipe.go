// go_pipe.go: Go's io.Pipe + io.MultiWriter idiom, the row bench_bytes puts
// beside lockstep.  One writer copies -bytes bytes out of a 256 KiB block that
// stays in cache, in -chunk byte writes, through io.MultiWriter to -readers
// io.Pipe readers, each on its own goroutine, reading into its own 64 KiB
// buffer and touching each span.  Prints "seconds S".  Standard library only:
// bench_bytes runs it with `GO111MODULE=off go run`, offline.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

func main() {
	total := flag.Int64("bytes", 1<<30, "bytes to copy")
	readers := flag.Int("readers", 4, "io.Pipe readers")
	chunk := flag.Int("chunk", 1<<16, "bytes per write")
	flag.Parse()

	block := make([]byte, 256<<10)
	for i := range block {
		block[i] = byte(i*131 + i>>9)
	}
	var wg sync.WaitGroup
	writers := make([]io.Writer, *readers)
	pipes := make([]*io.PipeWriter, *readers)
	seen := make([]int64, *readers)
	for i := 0; i < *readers; i++ {
		r, w := io.Pipe()
		writers[i], pipes[i] = w, w
		wg.Add(1)
		go func(i int, r *io.PipeReader) {
			defer wg.Done()
			buf := make([]byte, 1<<16)
			var acc byte
			for {
				n, err := r.Read(buf)
				if n > 0 {
					acc ^= buf[0] ^ buf[n-1]
					seen[i] += int64(n)
				}
				if err != nil {
					break
				}
			}
			_ = acc
		}(i, r)
	}
	mw := io.MultiWriter(writers...)
	start := time.Now()
	for left := *total; left > 0; {
		n := int64(*chunk)
		if n > left {
			n = left
		}
		if n > int64(len(block)) {
			n = int64(len(block))
		}
		if _, err := mw.Write(block[:n]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		left -= n
	}
	for _, w := range pipes {
		w.Close()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	for _, s := range seen {
		if s != *total {
			fmt.Fprintln(os.Stderr, "a reader missed bytes")
			os.Exit(1)
		}
	}
	fmt.Printf("seconds %f\n", elapsed)
}
