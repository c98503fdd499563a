#!/usr/bin/env python3
"""Drafts an upgrade script between two install scripts of the extension.

    scripts/upgrade-draft.py extension/chat--0.1.0.sql extension/chat--0.2.0.sql
    scripts/upgrade-draft.py --refresh extension/chat--0.1.0--0.2.0.sql \
        extension/chat--0.1.0.sql extension/chat--0.2.0.sql

Prints, statement by statement, what the new script has that the old one
lacks: changed functions as CREATE OR REPLACE (flagged when the result type
or the argument list changed, which needs DROP FUNCTION first), new
statements as they are, and the old statements that disappeared as comments.
Table and type changes come out as their new CREATE statements, flagged for
hand translation into ALTER.  With --refresh, an existing (unreleased)
upgrade script is brought up to date in place instead: every function and
COMMENT it defines takes its text from the new install script, and what the
new script changes beyond it is listed for hand work.  A draft to review, never to ship unread:
tests/upgrade/run.sh proves the result equals a fresh install.
"""
import re
import sys


def statements(path):
    """Splits a SQL script into statements (dollar quotes respected), without leading comments."""
    out, cur, tag = [], [], None
    for line in open(path, encoding="utf-8"):
        if tag is None and not cur and (line.strip() == "" or line.lstrip().startswith("--")):
            continue
        if tag is None and not cur and line.startswith("\\"):
            continue  # a psql meta-command (the \echo guard) is a line of its own
        cur.append(line)
        for m in re.finditer(r"\$[A-Za-z_]*\$", line):
            if tag is None:
                tag = m.group(0)
            elif m.group(0) == tag:
                tag = None
        if tag is None and re.sub(r"--.*$", "", line).rstrip().endswith(";"):
            text = "".join(cur).strip()
            if not text.startswith("\\echo"):
                out.append(text)
            cur = []
    return out


def key(stmt):
    """Functions by name and argument list, comments by their object; else the whole text."""
    norm = " ".join(stmt.split())
    c = re.match(r"(COMMENT ON .*?) IS ", norm, re.S)
    if c:
        return ("comment", c.group(1)), norm
    m = re.match(r"CREATE (?:OR REPLACE )?FUNCTION ([\w.]+)\((.*?)\)\s*RETURNS", norm, re.S)
    if m:
        # the argument list too: overloads (fail_push(id, error) and
        # fail_push(id, error, retry_after)) are different functions
        return ("function", m.group(1) + "(" + m.group(2) + ")"), norm
    return ("stmt", norm), norm


def refresh(upgrade, old_path, new_path):
    """Updates the functions and comments of an upgrade script from the new install script."""
    text = open(upgrade, encoding="utf-8").read()
    new = {key(s)[0]: s for s in statements(new_path)}
    old = {key(s)[0]: s for s in statements(old_path)}
    have = set()
    for s in statements(upgrade):
        k = key(s)[0]
        have.add(k)
        if k[0] not in ("function", "comment") or k not in new:
            continue
        t = new[k]
        if s.startswith("CREATE OR REPLACE"):
            t = re.sub(r"^CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", t)
        if " ".join(t.split()) != " ".join(s.split()):
            text = text.replace(s, t)
            print("refreshed: " + " ".join(k[1].split())[:100])
    open(upgrade, "w", encoding="utf-8").write(text)
    for k, s in new.items():
        if k not in have and (k not in old or " ".join(old[k].split()) != " ".join(s.split())):
            print("not in the upgrade script yet: " + s.splitlines()[0][:100])


def main():
    if sys.argv[1] == "--refresh":
        refresh(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    old = {key(s)[0]: s for s in statements(sys.argv[1])}
    new = statements(sys.argv[2])
    seen = set()
    print("-- drafted by scripts/upgrade-draft.py: review every statement")
    for s in new:
        k, norm = key(s)
        seen.add(k)
        if k in old and " ".join(old[k].split()) == norm:
            continue
        if k[0] == "function" and k in old:
            ret_old = re.search(r"RETURNS(.*?)LANGUAGE", " ".join(old[k].split()))
            ret_new = re.search(r"RETURNS(.*?)LANGUAGE", norm)
            if ret_old and ret_new and ret_old.group(1) != ret_new.group(1):
                print("-- RESULT TYPE CHANGED: DROP FUNCTION first (grants must be given again)")
            print(re.sub(r"^CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", s) + "\n")
        elif k[0] == "function":
            print("-- new function\n" + s + "\n")
        elif re.match(r"CREATE (TABLE|TYPE|UNLOGGED TABLE|VIEW)", s):
            print("-- CHANGED OR NEW RELATION/TYPE: translate into ALTER by hand\n/*\n" + s + "\n*/\n")
        else:
            print(s + "\n")
    for k, s in old.items():
        if k not in seen:
            first = s.splitlines()[0]
            print("-- gone from the new script (drop or keep?): " + first)


if __name__ == "__main__":
    main()
