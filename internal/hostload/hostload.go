package hostload

import (
	"os"
	"strings"
)

// Average returns the 1, 5 and 15 minute load averages as /proc/loadavg
// has them ("0.52 0.58 0.59"), or "unknown".
func Average() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
