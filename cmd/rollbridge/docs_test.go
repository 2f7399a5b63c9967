package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The doc check: every `rollbridge …` command shown in README.md and
// docs/*.md must name a command of the live cobra tree and only flags that
// command defines, and every relative link must point at an existing file
// (and heading). Docs cannot go stale silently: renaming a flag fails this
// test until the docs follow.
//
// What is checked as a command:
//   - every line of a fenced block whose info string is empty, sh, bash,
//     shell, console or text (continuation lines ending in `\` are joined);
//   - every inline code span;
//
// in both, each shell segment (split at `|`, `||`, `&&`, `;`, `&`) whose
// program word, after an optional `$ ` prompt, `VAR=value` assignments and
// `sudo`, is `rollbridge` or a path ending in `/rollbridge` (bin/rollbridge).
// Command words must come before the first flag. Placeholders (`<…>`, `$VAR`,
// `…`, `[options]`) are ignored; a placeholder in the command position skips
// the line. A fence preceded by the line `<!-- doccheck: skip -->` is not
// checked: for blocks that only look like commands (a file tree listing a
// `rollbridge` binary) and for commands of the original Node.js tool.

// docCheckSkipMarker before a fence exempts that block.
const docCheckSkipMarker = "<!-- doccheck: skip -->"

// checkedFenceLangs are the fence info strings whose lines are shell or
// terminal text.
var checkedFenceLangs = map[string]bool{"": true, "sh": true, "bash": true, "shell": true, "console": true, "text": true}

func TestDocsCommandsExist(t *testing.T) {
	root := docsCommandTree()
	files := docFiles(t)
	total := 0
	for _, path := range files {
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		rel := docRelToRepo(t, path)
		res := scanDocCommands(root, string(text))
		total += res.checked
		for _, f := range res.findings {
			t.Errorf("%s:%d: %s", rel, f.line, f.msg)
		}
	}
	t.Logf("checked %d rollbridge command lines in %d files", total, len(files))
	// Guard against a parser that silently stops finding commands.
	if total < 50 {
		t.Errorf("only %d rollbridge command lines found in the docs; the doc scanner is broken", total)
	}
}

func TestDocsRelativeLinks(t *testing.T) {
	files := docFiles(t)
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		a := docHeadingAnchors(string(b))
		anchors[path] = a
		return a
	}
	links := 0
	for _, path := range files {
		text, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		rel := docRelToRepo(t, path)
		for _, l := range docLinks(string(text)) {
			links++
			if msg := docCheckLink(path, l.target, anchorsOf); msg != "" {
				t.Errorf("%s:%d: link %q: %s", rel, l.line, l.target, msg)
			}
		}
	}
	t.Logf("checked %d links in %d files", links, len(files))
}

// TestDocCheckFindsProblems pins that the checker reports what it must,
// naming the line and the offending command, flag or link.
func TestDocCheckFindsProblems(t *testing.T) {
	root := docsCommandTree()
	doc := strings.Join([]string{
		"# Title", // 1
		"",        // 2
		"```sh",   // 3
		"rollbridge deploy --release-path /srv/x \\", // 4
		"  --revsion abc",                                        // 5
		"$ bin/rollbridge deplyo -c x.js",                        // 6
		"rollbridge status -c x.js --json | jq . # fine",         // 7
		"ROLLBRIDGE_RUNNER=exec rollbridge logs -f -z -n20 -fn5", // 8
		"rollbridge <command> --whatever",                        // 9: placeholder command, skipped
		"```",                                                    // 10
		"Run `rollbridge events --limit 5 --tail` now.",          // 11
		docCheckSkipMarker,                                       // 12
		"```sh",                                                  // 13
		"rollbridge deploy --old-node-flag",                      // 14
		"```",                                                    // 15
		"```js",                                                  // 16
		"rollbridge deploy --not-checked-in-js",                  // 17
		"```",                                                    // 18
		"See [cli](cli.md#nope) and [x](missing.md) and [ok](#title) and [bad](#gone).", // 19
	}, "\n")
	res := scanDocCommands(root, doc)
	var got []string
	for _, f := range res.findings {
		got = append(got, fmt.Sprintf("%d: %s", f.line, f.msg))
	}
	want := []string{
		`4: unknown flag --revsion for "rollbridge deploy" in: rollbridge deploy --release-path /srv/x --revsion abc`,
		`6: unknown command "deplyo" for "rollbridge" in: bin/rollbridge deplyo -c x.js`,
		`8: unknown flag -z for "rollbridge logs" in: rollbridge logs -f -z -n20 -fn5`,
		`11: unknown flag --tail for "rollbridge events" in: rollbridge events --limit 5 --tail`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if res.checked != 5 {
		t.Errorf("checked %d command lines, want 5", res.checked)
	}

	dir := t.TempDir()
	page := filepath.Join(dir, "page.md")
	if err := os.WriteFile(page, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cli.md"), []byte("# CLI\n\n## `deploy`\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	anchorsOf := func(path string) map[string]bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		return docHeadingAnchors(string(b))
	}
	got = nil
	for _, l := range docLinks(doc) {
		if msg := docCheckLink(page, l.target, anchorsOf); msg != "" {
			got = append(got, fmt.Sprintf("%d: %s: %s", l.line, l.target, msg))
		}
	}
	want = []string{
		`19: cli.md#nope: cli.md has no heading with anchor #nope`,
		`19: missing.md: ` + filepath.Join(dir, "missing.md") + ` does not exist`,
		`19: #gone: page.md has no heading with anchor #gone`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("link findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if a := docHeadingAnchors("## `recover` and `predeploy-cleanup`\n## Quick start (system manager)\n## The .deb\n## Dup\n## Dup\n"); !a["recover-and-predeploy-cleanup"] || !a["quick-start-system-manager"] || !a["the-deb"] || !a["dup"] || !a["dup-1"] {
		t.Errorf("heading anchors: %v", a)
	}
}

// docsCommandTree is the live command tree with the flags cobra adds at run
// time (help, version) and the help command.
func docsCommandTree() *cobra.Command {
	root := (&app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, cwd: ".", env: nil}).rootCommand()
	root.InitDefaultHelpCmd()
	root.InitDefaultVersionFlag()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.InitDefaultHelpFlag()
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	return root
}

// docRepoRoot is the directory holding go.mod.
func docRepoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's working directory")
		}
		dir = parent
	}
}

func docFiles(t *testing.T) []string {
	t.Helper()
	root := docRepoRoot(t)
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(files)
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	if len(files) < 2 {
		t.Fatalf("no docs found under %s", root)
	}
	return files
}

func docRelToRepo(t *testing.T, path string) string {
	rel, err := filepath.Rel(docRepoRoot(t), path)
	if err != nil {
		return path
	}
	return rel
}

// docFinding is one problem at a 1-based line.
type docFinding struct {
	line int
	msg  string
}

type docScan struct {
	checked  int
	findings []docFinding
}

var docFenceRE = regexp.MustCompile("^\\s*(`{3,}|~{3,})\\s*([^`\\s]*)")

// docFence reports whether line opens or closes a fence: its marker and info
// string.
func docFence(line string) (marker, lang string, ok bool) {
	m := docFenceRE.FindStringSubmatch(line)
	if m == nil {
		return "", "", false
	}
	return m[1], strings.ToLower(m[2]), true
}

// docClosesFence: a closing fence is the opening character repeated at least
// as often, with nothing but spaces after it.
func docClosesFence(line, open string) bool {
	s := strings.TrimSpace(line)
	if len(s) < len(open) || strings.Trim(s, open[:1]) != "" {
		return false
	}
	return true
}

// scanDocCommands checks every rollbridge command of a markdown text.
func scanDocCommands(root *cobra.Command, text string) docScan {
	var res docScan
	check := func(line int, cmdline string) {
		n, problems := docCheckCommandText(root, cmdline)
		res.checked += n
		for _, p := range problems {
			res.findings = append(res.findings, docFinding{line: line, msg: p})
		}
	}
	lines := strings.Split(text, "\n")
	var para []string // prose lines for inline code spans
	paraStart := 0
	flushPara := func() {
		for _, span := range docCodeSpans(para) {
			check(paraStart+span.line, span.text)
		}
		para = nil
	}
	prev := ""
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		marker, lang, isFence := docFence(line)
		if !isFence {
			if strings.TrimSpace(line) == "" {
				flushPara()
			} else {
				if para == nil {
					paraStart = i + 1
				}
				para = append(para, line)
			}
			if strings.TrimSpace(line) != "" {
				prev = strings.TrimSpace(line)
			}
			continue
		}
		flushPara()
		skip := prev == docCheckSkipMarker || !checkedFenceLangs[lang]
		// The block runs to its closing fence (or the end of the file).
		j := i + 1
		for j < len(lines) && !docClosesFence(lines[j], marker) {
			j++
		}
		if !skip {
			for k := i + 1; k < j; k++ {
				start := k
				joined := strings.TrimRight(lines[k], " \t")
				for strings.HasSuffix(joined, `\`) && k+1 < j {
					k++
					joined = strings.TrimSuffix(joined, `\`) + " " + strings.TrimSpace(lines[k])
				}
				check(start+1, joined)
			}
		}
		i = j
		prev = ""
	}
	flushPara()
	return res
}

type docSpan struct {
	line int // 0-based offset within the paragraph
	text string
}

// docCodeSpans returns the inline code spans of a paragraph; a span may cross
// a line break (markdown joins it with a space).
func docCodeSpans(lines []string) []docSpan {
	text := strings.Join(lines, "\n")
	var out []docSpan
	for i := 0; i < len(text); {
		if text[i] != '`' {
			i++
			continue
		}
		n := 0
		for i+n < len(text) && text[i+n] == '`' {
			n++
		}
		open := text[i : i+n]
		end := -1
		for j := i + n; j < len(text); {
			k := strings.Index(text[j:], open)
			if k < 0 {
				break
			}
			k += j
			// The closing run must be exactly as long as the opening one.
			m := k
			for m < len(text) && text[m] == '`' {
				m++
			}
			if m-k == n {
				end = k
				break
			}
			j = m
		}
		if end < 0 {
			i += n
			continue
		}
		body := strings.ReplaceAll(text[i+n:end], "\n", " ")
		out = append(out, docSpan{line: strings.Count(text[:i], "\n"), text: strings.TrimSpace(body)})
		i = end + n
	}
	return out
}

// docCheckCommandText checks every rollbridge invocation in one shell line and
// returns how many it checked and the problems.
func docCheckCommandText(root *cobra.Command, line string) (int, []string) {
	checked := 0
	var problems []string
	for _, seg := range docShellSegments(docShellWords(line)) {
		words := docProgramWords(seg)
		if len(words) == 0 || !docIsRollbridgeProgram(words[0]) {
			continue
		}
		ok, p := docCheckInvocation(root, words)
		if ok {
			checked++
		}
		problems = append(problems, p...)
	}
	return checked, problems
}

// docShellWords splits a line into words, honouring quotes; a word starting
// with `#` begins a comment and ends the line.
func docShellWords(line string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	flush := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			inWord = true
		case unicode.IsSpace(r):
			flush()
		case r == '#' && !inWord:
			flush()
			return words
		case r == ';' || r == '&' || r == '|':
			// Operators end a word; a run of them is one separator word.
			flush()
			op := string(r)
			for i+1 < len(rs) && (rs[i+1] == '&' || rs[i+1] == '|') {
				i++
				op += string(rs[i])
			}
			words = append(words, op)
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	flush()
	return words
}

// docShellSegments splits words at command separators. An unspaced `|` inside
// a word (usage text such as `auto|systemd|exec`) is not a pipe: only
// operators written as their own word separate.
func docShellSegments(words []string) [][]string {
	var segs [][]string
	var cur []string
	for _, w := range words {
		switch w {
		case "|", "||", "&&", ";", "&", ";;":
			segs = append(segs, cur)
			cur = nil
		default:
			cur = append(cur, w)
		}
	}
	return append(segs, cur)
}

// docProgramWords drops a prompt, variable assignments and sudo in front of
// the program, and redirections after it.
func docProgramWords(seg []string) []string {
	i := 0
	for i < len(seg) {
		w := seg[i]
		switch {
		case w == "$":
			i++
		case w == "sudo" || w == "exec" || w == "time":
			i++
			// sudo -u USER / -E …
			for i < len(seg) && strings.HasPrefix(seg[i], "-") {
				if seg[i] == "-u" || seg[i] == "-g" {
					i++
				}
				i++
			}
		case docIsAssignment(w):
			i++
		default:
			out := seg[i:]
			for k, w := range out {
				if strings.HasPrefix(w, ">") || strings.HasPrefix(w, "2>") || strings.HasPrefix(w, "&>") || w == "<" {
					return out[:k]
				}
			}
			return out
		}
	}
	return nil
}

var docAssignmentRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

func docIsAssignment(w string) bool { return docAssignmentRE.MatchString(w) }

func docIsRollbridgeProgram(w string) bool {
	return w == "rollbridge" || strings.HasSuffix(w, "/rollbridge")
}

// docIsPlaceholder: words that stand for something the reader fills in.
func docIsPlaceholder(w string) bool {
	return strings.ContainsAny(w, "<>$…") || strings.Contains(w, "...") ||
		strings.HasPrefix(w, "[") || strings.HasPrefix(w, "{") || strings.ToUpper(w) == w && strings.ToLower(w) != w
}

// docCheckInvocation checks one `rollbridge …` word list against the tree. It
// reports whether the line was checked (false: placeholder command).
func docCheckInvocation(root *cobra.Command, words []string) (bool, []string) {
	shown := strings.Join(words, " ")
	args := words[1:]
	// Command words: the leading words that are not flags.
	var path []string
	for _, w := range args {
		if strings.HasPrefix(strings.TrimLeft(w, "[("), "-") {
			break
		}
		path = append(path, w)
	}
	cmd := root
	for n, w := range path {
		if !cmd.HasSubCommands() {
			break // positional arguments
		}
		if docIsPlaceholder(w) {
			return false, nil
		}
		found, rest, err := root.Find(path[:n+1])
		if err != nil {
			return true, []string{fmt.Sprintf("%s in: %s", docFirstLine(err.Error()), shown)}
		}
		if found == cmd || len(rest) > 0 {
			return true, []string{fmt.Sprintf("unknown command %q for %q in: %s", w, cmd.CommandPath(), shown)}
		}
		cmd = found
	}
	var problems []string
	for _, w := range args {
		w = strings.TrimLeft(w, "[(")
		w = strings.TrimRight(w, "]),")
		if w == "--" {
			break
		}
		if !strings.HasPrefix(w, "-") || w == "-" || strings.ContainsAny(w, "$<…") {
			continue
		}
		if name, ok := strings.CutPrefix(w, "--"); ok {
			name, _, _ = strings.Cut(name, "=")
			if docLookupFlag(cmd, name) == nil {
				problems = append(problems, fmt.Sprintf("unknown flag --%s for %q in: %s", name, cmd.CommandPath(), shown))
			}
			continue
		}
		letters, _, _ := strings.Cut(w[1:], "=")
		if letters == "" || !unicode.IsLetter(rune(letters[0])) {
			continue // a negative number or similar value
		}
		// Shorthands combine (-qf); one that takes a value ends the run
		// and the rest is its value (-n20, -cshop.js).
		for _, r := range letters {
			f := docLookupShorthand(cmd, string(r))
			if f == nil {
				problems = append(problems, fmt.Sprintf("unknown flag -%c for %q in: %s", r, cmd.CommandPath(), shown))
				break
			}
			if f.NoOptDefVal == "" {
				break
			}
		}
	}
	return true, problems
}

func docLookupFlag(cmd *cobra.Command, name string) *pflag.Flag {
	if f := cmd.Flags().Lookup(name); f != nil {
		return f
	}
	if f := cmd.InheritedFlags().Lookup(name); f != nil {
		return f
	}
	return nil
}

func docLookupShorthand(cmd *cobra.Command, s string) *pflag.Flag {
	if f := cmd.Flags().ShorthandLookup(s); f != nil {
		return f
	}
	if f := cmd.InheritedFlags().ShorthandLookup(s); f != nil {
		return f
	}
	return nil
}

func docFirstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// docLink is one link target at a 1-based line.
type docLink struct {
	line   int
	target string
}

var (
	docInlineLinkRE = regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)`)
	docRefLinkRE    = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$`)
)

// docLinks returns the link targets outside code blocks and code spans.
func docLinks(text string) []docLink {
	var out []docLink
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		if marker, _, ok := docFence(lines[i]); ok {
			for i++; i < len(lines) && !docClosesFence(lines[i], marker); i++ {
			}
			continue
		}
		line := docStripCodeSpans(lines[i])
		if m := docRefLinkRE.FindStringSubmatch(line); m != nil {
			out = append(out, docLink{line: i + 1, target: m[1]})
			continue
		}
		for _, m := range docInlineLinkRE.FindAllStringSubmatch(line, -1) {
			out = append(out, docLink{line: i + 1, target: m[1]})
		}
	}
	return out
}

var docCodeSpanRE = regexp.MustCompile("(`+)[^`]*?(`+)")

func docStripCodeSpans(line string) string { return docCodeSpanRE.ReplaceAllString(line, "") }

var docSchemeRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)

// docCheckLink returns "" for a good link, else why it is broken. External
// links (with a scheme) are not fetched.
func docCheckLink(from, target string, anchorsOf func(string) map[string]bool) string {
	if docSchemeRE.MatchString(target) {
		return ""
	}
	path, anchor, _ := strings.Cut(target, "#")
	file := from
	if path != "" {
		file = filepath.Join(filepath.Dir(from), filepath.FromSlash(path))
		if _, err := os.Stat(file); err != nil {
			return file + " does not exist"
		}
	}
	if anchor == "" || !strings.HasSuffix(file, ".md") {
		return ""
	}
	if !anchorsOf(file)[anchor] {
		return fmt.Sprintf("%s has no heading with anchor #%s", filepath.Base(file), anchor)
	}
	return ""
}

var (
	docHeadingRE    = regexp.MustCompile(`^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$`)
	docMDLinkRE     = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
	docHTMLAnchorRE = regexp.MustCompile(`<a\s+(?:name|id)="([^"]+)"`)
)

// docHeadingAnchors returns GitHub's anchors for the headings of a markdown
// text: lower case, punctuation dropped, spaces to hyphens, -1, -2 … for
// repeats. Explicit <a name|id> anchors count too.
func docHeadingAnchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		if marker, _, ok := docFence(lines[i]); ok {
			for i++; i < len(lines) && !docClosesFence(lines[i], marker); i++ {
			}
			continue
		}
		for _, m := range docHTMLAnchorRE.FindAllStringSubmatch(lines[i], -1) {
			out[m[1]] = true
		}
		m := docHeadingRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		slug := docSlug(m[2])
		if n := seen[slug]; n > 0 {
			out[fmt.Sprintf("%s-%d", slug, n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}

func docSlug(heading string) string {
	heading = docMDLinkRE.ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}
