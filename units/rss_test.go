package units

import (
	"os"
	"testing"
)

func TestRSSBytes(t *testing.T) {
	// A running Go test binary is resident for well over 1 MiB.
	if got := RSSBytes(os.Getpid()); got < 1<<20 || got%1024 != 0 {
		t.Errorf("RSSBytes(self) = %d, want a whole number of KiB above 1 MiB", got)
	}
	if got := RSSBytes(1 << 30); got != 0 {
		t.Errorf("RSSBytes(no such pid) = %d, want 0", got)
	}
}
