# Thin wrapper over the scripts in scripts/ and the go tool.
PREFIX ?= /usr/local
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build install test fuzz deb clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/rollbridge ./cmd/rollbridge

install: build
	install -D -m 0755 bin/rollbridge $(DESTDIR)$(PREFIX)/bin/rollbridge

# The project's test command (the same one CI runs).
test:
	scripts/test

# The long local fuzz runs (CI runs each briefly, scripts/test); go test
# fuzzes one target per run, so each gets FUZZTIME.
FUZZTIME ?= 10m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME) ./control

# The Debian package (binary, units, man pages, completions) in dist/.
deb:
	$(GO) run ./packaging/cmd/build-deb

clean:
	rm -rf bin dist
