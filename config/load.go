package config

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// DefaultFileName is the config file looked up when --config is omitted.
const DefaultFileName = "rollbridge.js"

// LoadOptions bounds and feeds the evaluation of a config file.
type LoadOptions struct {
	// Env is the config's process.env (KEY=VALUE). nil means os.Environ().
	Env []string
	// Timeout bounds evaluation; 0 means DefaultTimeout (5s).
	Timeout time.Duration
	// MemoryLimit is how far the Go heap may grow during evaluation before
	// the script is interrupted; 0 means DefaultMemoryLimit (256 MiB).
	MemoryLimit uint64
}

func (o LoadOptions) withDefaults() LoadOptions {
	if o.Env == nil {
		o.Env = os.Environ()
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MemoryLimit == 0 {
		o.MemoryLimit = DefaultMemoryLimit
	}
	return o
}

// ResolvePath implements CFG-01: an explicit path is returned as given;
// otherwise <cwd>/rollbridge.js when it is a regular file (cwd "" means the
// process's working directory).
func ResolvePath(explicit, cwd string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	if cwd == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", fmt.Errorf("resolve config path: %w", err)
		}
		cwd = wd
	}
	candidate := filepath.Join(cwd, DefaultFileName)
	fi, err := os.Stat(candidate)
	switch {
	case err == nil && fi.Mode().IsRegular():
		return candidate, nil
	case err == nil || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
		//lint:ignore ST1005 exact user-facing message of spec §2.1 (CFG-01)
		return "", fmt.Errorf("No config file found in %s. Pass --config <path> or add one of: %s.", cwd, DefaultFileName)
	default:
		return "", fmt.Errorf("resolve config path: %w", err)
	}
}

// Load evaluates, normalizes and validates the config file at path. The file
// is read and evaluated afresh on every call (no caching), so edits are
// always seen. Validation problems yield *InvalidError; read and evaluation
// problems an ordinary error.
func Load(ctx context.Context, path string, opts LoadOptions) (*Config, error) {
	cfg, issues, err := load(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	if len(issues) > 0 {
		return nil, &InvalidError{Issues: issues}
	}
	return cfg, nil
}

// ReadFailureFix is the fix of the single issue Check reports when the file
// cannot be read or evaluated.
const ReadFailureFix = "Ensure the file exists and exports a default Rollbridge config object."

// Check is Load for `rollbridge validate`: a read or evaluation error
// becomes a single issue carrying the error's text. cfg is nil whenever
// there is an issue.
func Check(ctx context.Context, path string, opts LoadOptions) (cfg *Config, issues []Issue) {
	cfg, issues, err := load(ctx, path, opts)
	if err != nil {
		return nil, []Issue{{Message: err.Error(), Fix: ReadFailureFix}}
	}
	if len(issues) > 0 {
		return nil, issues
	}
	return cfg, nil
}

func load(ctx context.Context, path string, opts LoadOptions) (*Config, []Issue, error) {
	opts = opts.withDefaults()
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, fmt.Errorf("resolve config path %s: %w", path, err)
	}
	src, err := readSource(abs)
	if err != nil {
		return nil, nil, err
	}
	raw, err := evaluate(ctx, abs, src, opts)
	if err != nil {
		return nil, nil, err
	}
	cfg, issues := normalize(raw, abs)
	return cfg, issues, nil
}
