#!/usr/bin/env python3
"""The man pages render without warnings and document what the programs do.

usage: man_pages.py AGENTLAB AGENTLABD MANDIR

- agentlab(1), agentlabd(8), agentlab.conf(5) render with `man --warnings -l`
  and not one line on stderr;
- agentlab(1) has a subsection "agentlab CMD [SUB]" for every command of
  `agentlab --help` and every subcommand its --help names, and each option the
  --help of a (sub)command lists appears in its subsection (options of a
  command with subcommands may be in any of its subsections); an option the
  page documents for a subcommand must be one its --help lists;
- agentlabd(8) lists every option of `agentlabd --help`;
- agentlab.conf(5) has every key of `agentlab config keys` in its section's
  part of the page with the same default, and no key that is not one.
Everything comes from the programs themselves, so a new option, command or
key without documentation fails here.
"""
import os
import re
import subprocess
import sys

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def run(argv, ok=(0,)):
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode not in ok:
        fail("%s exited %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p.stdout


def render(path):
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="100",
               # no hyphenation: options and keys stay whole words
               MANROFFOPT="-rHY=0")
    env.pop("MANPAGER", None)
    env.pop("PAGER", None)
    p = subprocess.run(["man", "--warnings", "-l", path], capture_output=True, text=True,
                       env=env)
    if p.returncode != 0 or p.stderr.strip():
        fail("man --warnings -l %s: exit %d, stderr:\n%s" % (path, p.returncode, p.stderr))
    text = p.stdout
    # groff's typographic hyphen and minus, in case a locale brings them back
    return text.replace("\u2010", "-").replace("\u2212", "-")


OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


def options_of(help_text):
    """Options a --help lists: those that start one of its indented lines
    (including "-c, --config"), plus those of its Usage lines."""
    opts = set()
    for line in help_text.splitlines():
        s = line.strip()
        if line.startswith("Usage:") or (line.startswith(" ") and s.startswith("-")):
            head = s if line.startswith("Usage:") else re.split(r"\s{2,}", s)[0]
            opts.update(o for o in OPTION.findall(head) if o != "--")
    return opts


def subcommands_of(cmd, help_text):
    subs = []
    for line in help_text.splitlines():
        m = re.match(r"^(?:Usage:|\s+)\s*agentlab %s ([a-z][a-z-]*)\b" % re.escape(cmd), line)
        if not m:
            # "  submit FILE|-   ..." in the command list of job and image
            m = re.match(r"^  ([a-z][a-z-]*)(?: |$)", line)
        if m and m.group(1) not in subs:
            subs.append(m.group(1))
    return subs


def split_subsections(text):
    """{"agentlab run": text, ...} from the rendered page's subsections
    (3-space-indented headings)."""
    parts = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"^   (agentlab(?: [a-z-]+)+)\s*$", line)
        if m:
            cur = m.group(1)
            parts[cur] = ""
        elif re.match(r"^\S", line):
            cur = None
        elif cur:
            parts[cur] += line + "\n"
    return parts


def check_cli(agentlab, page):
    text = render(page)
    parts = split_subsections(text)
    top = run([agentlab, "--help"])
    commands = re.findall(r"^  ([a-z][a-z-]*)\s{2,}", top.split("Commands:")[1].split("\n\n")[0],
                          re.M)
    if len(commands) < 5:
        fail("found only %r in agentlab --help" % commands)
    for opt in options_of(top):
        if not re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(opt), text.split("COMMANDS")[0]):
            fail("agentlab(1): option %s of agentlab --help is not under OPTIONS" % opt)
    documented = set(parts)
    expected = set()
    for cmd in commands:
        help_text = run([agentlab, cmd, "--help"])
        subs = subcommands_of(cmd, help_text)
        own = options_of(help_text) - {"-h", "--help"}
        if not subs:
            expected.add("agentlab " + cmd)
            check_options(parts, "agentlab " + cmd, own, cmd + " --help", exact=True)
            continue
        scope = "".join(v for k, v in parts.items() if k == "agentlab " + cmd or
                        k.startswith("agentlab %s " % cmd))
        for opt in own:
            if not has_word(scope, opt):
                fail("agentlab(1): option %s of `agentlab %s --help` is not in any "
                     "\"agentlab %s ...\" subsection" % (opt, cmd, cmd))
        for sub in subs:
            name = "agentlab %s %s" % (cmd, sub)
            expected.add(name)
            sub_help = run([agentlab, cmd, sub, "--help"])
            sub_opts = options_of(sub_help) - {"-h", "--help"}
            check_options(parts, name, sub_opts, "%s %s --help" % (cmd, sub), exact=False,
                          also=own)
    for name in sorted(expected - documented):
        fail("agentlab(1) has no subsection \"%s\"" % name)
    for name in sorted(documented - expected):
        if name.count(" ") == 1 and any(e.startswith(name + " ") for e in expected):
            continue  # "agentlab image": the common part of a command
        fail("agentlab(1) documents \"%s\", which --help does not know" % name)
    print("agentlab(1): %d commands, %d subsections checked" % (len(commands), len(expected)))


def has_word(text, word):
    return re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(word), text) is not None


def check_options(parts, name, opts, what, exact, also=()):
    body = parts.get(name)
    if body is None:
        return  # reported as a missing subsection
    # options the command shares with its subcommands (image's --config)
    # are checked in the command's scope
    for opt in sorted(set(opts) - set(also)):
        if not has_word(body, opt):
            fail("agentlab(1): \"%s\" does not mention %s (from %s)" % (name, opt, what))
    # options the page gives as entries (an indented line starting with one)
    # must exist
    for line in body.splitlines():
        m = re.match(r"^       (-[-a-zA-Z][\w-]*)", line)
        if m and m.group(1) not in opts and m.group(1) not in also and \
                m.group(1) not in ("-h", "--help"):
            fail("agentlab(1): \"%s\" documents %s, which %s does not list" %
                 (name, m.group(1), what))


def check_daemon(agentlabd, page):
    text = render(page)
    opts = options_of(run([agentlabd, "--help"]))
    for opt in sorted(opts):
        if not has_word(text, opt):
            fail("agentlabd(8) does not mention %s" % opt)
    print("agentlabd(8): %d options checked" % len(opts))


SECTION_HEADINGS = {"agent": "AGENT SECTION", "backend": "BACKEND SECTIONS",
                    "source": "SOURCE SECTIONS", "pool": "POOL SECTIONS"}


def check_config(agentlab, page):
    text = render(page)
    parts = {}
    cur = None
    for line in text.splitlines():
        if re.match(r"^\S", line):
            cur = next((k for k, h in SECTION_HEADINGS.items() if line.strip() == h), None)
            if cur:
                parts[cur] = ""
        elif cur:
            parts[cur] += line + "\n"
    for sec, heading in SECTION_HEADINGS.items():
        if sec not in parts:
            fail("agentlab.conf(5) has no section %s" % heading)
            parts[sec] = ""
    # "   key = default" entries of each section
    documented = {sec: {} for sec in parts}
    for sec, body in parts.items():
        for m in re.finditer(r"^       ([a-z][a-z0-9_]*) =(?: (.*))?$", body, re.M):
            documented[sec].setdefault(m.group(1), []).append((m.group(2) or "").strip())
    keys = run([agentlab, "config", "keys"]).splitlines()
    if len(keys) < 50:
        fail("agentlab config keys printed only %d keys" % len(keys))
    known = set()
    for line in keys:
        sec, _types, name, default, _help = line.split("\t")
        known.add((sec, name))
        default = default.replace("@state", "<state_dir>").replace("@run", "<run_dir>")
        got = documented.get(sec, {}).get(name)
        if not got:
            fail("agentlab.conf(5) does not document [%s] %s" % (sec, name))
        elif default not in got:
            fail("agentlab.conf(5): [%s] %s = %r, the program's default is %r" %
                 (sec, name, got, default))
    for sec, names in documented.items():
        for name in names:
            if (sec, name) not in known:
                fail("agentlab.conf(5) documents [%s] %s, which is not a key" % (sec, name))
    # `config show` of the built-in configuration prints the [agent] keys and
    # those of the implicit backend and pool: all of them must be known
    env = dict(os.environ, AGENTLAB_CONFIG="/dev/null")
    shown = subprocess.run([agentlab, "config", "show"], capture_output=True, text=True,
                           env=env).stdout
    sec = None
    for line in shown.splitlines():
        m = re.match(r"^\[(\w+)", line)
        if m:
            sec = m.group(1)
        m = re.match(r"^([a-z_0-9]+) = ", line)
        if m and sec and (sec, m.group(1)) not in known:
            fail("`config show` prints [%s] %s, which `config keys` does not list" %
                 (sec, m.group(1)))
    print("agentlab.conf(5): %d keys checked" % len(keys))


def main():
    agentlab, agentlabd, mandir = sys.argv[1:4]
    check_cli(agentlab, os.path.join(mandir, "agentlab.1"))
    check_daemon(agentlabd, os.path.join(mandir, "agentlabd.8"))
    check_config(agentlab, os.path.join(mandir, "agentlab.conf.5"))
    if failures:
        print("%d problems" % len(failures))
        sys.exit(1)
    print("ok")


main()
