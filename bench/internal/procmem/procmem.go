package procmem

import (
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// RSS returns the process's resident set size (VmRSS) in bytes, 0 when
// unknown.
func RSS() uint64 { return RSSOf(0) }

// RSSOf returns the resident set size (VmRSS) of process pid (0: this
// process) in bytes, 0 when unknown.
func RSSOf(pid int) uint64 {
	data, err := os.ReadFile("/proc/" + procDir(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// HeapInuse collects garbage and returns the heap in use, in bytes.
func HeapInuse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// WriteHeapProfile writes a heap profile to path.
func WriteHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// CPU returns the user and system CPU time process pid has used (0: this
// process), read from /proc/<pid>/stat; 0 when unknown. The kernel counts it
// in clock ticks (USER_HZ, 100 per second on Linux): 10 ms resolution.
func CPU(pid int) time.Duration {
	data, err := os.ReadFile("/proc/" + procDir(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// procDir names process pid's directory under /proc (0: this process).
func procDir(pid int) string {
	if pid == 0 {
		return "self"
	}
	return strconv.Itoa(pid)
}
