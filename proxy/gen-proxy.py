#!/usr/bin/env python3
"""Writes the chat_proxy install script from the chat install script.

    gen-proxy.py CHAT_SQL ROUTING CUSTOM_SQL HEAD_SQL OUT      generate
    gen-proxy.py --check CHAT_SQL ROUTING CUSTOM_SQL          exit 1 when a
        chat.* function has no routing rule (or a rule cannot be applied)
    gen-proxy.py --upgrade OLD_PROXY_SQL NEW_PROXY_SQL OUT    upgrade script
        from a released chat_proxy version to the current one

chat_proxy holds no data, only functions and composite types (and one
sequence in its head), so an upgrade drops every generated or hand-written
function and type of the old version and creates the new version's.  The
head (proxy/head.sql: configure, the hash helpers) must be unchanged between
the two versions unless proxy/upgrade-head-OLD--NEW.sql says how to move it.

Every CREATE FUNCTION chat.<name>(...) of the chat script gets the rule of
its name in ROUTING (proxy/routing.conf explains the rules); the proxy
function keeps the exact signature (argument names, types, defaults and
result), so callers cannot tell the proxy from a partition.
"""
import re
import sys

KEYWORDS = r"(LANGUAGE|AS|SET|SECURITY|STABLE|IMMUTABLE|VOLATILE|STRICT|PARALLEL|COST|ROWS|CALLED|RETURNS\s+NULL)\b"


def balanced(text, start):
    """Index just after the parenthesis group that opens at text[start]."""
    depth, i, quote = 0, start, None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch == "'":
            quote = ch
        elif ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced parentheses at %d" % start)


def split_top(text, sep=','):
    """Splits text at sep outside parentheses and quotes."""
    out, depth, cur, quote = [], 0, '', None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch == "'":
            quote = ch
        elif ch == '(':
            depth += 1
        elif ch == ')':
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(cur.strip())
            cur = ''
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def functions(sql):
    """(name, args text, returns text, full statement) of each chat.* function."""
    sql = re.sub(r'--[^\n]*', '', sql)
    out = []
    for m in re.finditer(r'CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+chat\."?(\w+)"?\s*\(', sql):
        name = m.group(1)
        end = balanced(sql, m.end() - 1)
        args = ' '.join(sql[m.end():end - 1].split())
        rest = sql[end:]
        r = re.match(r'\s*RETURNS\s+', rest)
        ret = ''
        if r:
            pos = r.end()
            t = re.match(r'TABLE\s*\(', rest[pos:], re.I)
            if t:
                stop = balanced(rest, pos + t.end() - 1)
            else:
                k = re.search(r'\s' + KEYWORDS, rest[pos:])
                stop = pos + k.start()
            ret = ' '.join(rest[pos:stop].split())
        # the whole statement, for "copy": up to the end of its body
        body = re.match(r'.*?(\$\$.*?\$\$|\'[^\']*\'(\s*,\s*\'[^\']*\')?)\s*;', rest, re.S)
        stmt = sql[m.start():end] + (rest[:body.end()] if body else '')
        out.append((name, args, ret, stmt))
    return out


def arg_names(args):
    """Names of the input arguments (OUT ones left out)."""
    names = []
    for a in split_top(args):
        w = a.split()
        if w[0].upper() == 'OUT':
            continue
        if w[0].upper() in ('IN', 'INOUT'):
            w = w[1:]
        names.append(w[0])
    return names


def types_of(args):
    """Argument types without names and defaults, for REVOKE/COMMENT."""
    ts = []
    for a in split_top(args):
        w = re.split(r'\s+DEFAULT\s+|\s*=\s*', a, flags=re.I)[0].split()
        if w[0].upper() == 'OUT':
            continue
        if w[0].upper() in ('IN', 'INOUT'):
            w = w[1:]
        ts.append(' '.join(w[1:]))
    return ', '.join(ts)


def read_rules(path):
    rules = {}
    for line in open(path):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        m = re.match(r'(\w+)\s+(\w+)\s*(.*)$', line)
        name, rule, rest = m.group(1), m.group(2), m.group(3)
        q = re.search(r'"([^"]*)"', rest)
        params = rest[:q.start()].split() if q else rest.split()
        if q:
            params.append(q.group(1))
        rules[name] = (rule, params)
    return rules


def custom_names(path):
    return set(re.findall(r'CREATE\s+FUNCTION\s+chat\."?(\w+)', open(path).read()))


def composite_columns(sql):
    """Columns of each CREATE TYPE chat.x AS (...)."""
    cols = {}
    for m in re.finditer(r'CREATE\s+TYPE\s+chat\.(\w+)\s+AS\s*\(', sql):
        end = balanced(sql, m.end() - 1)
        body = re.sub(r'--[^\n]*', '', sql[m.end():end - 1])
        cols[m.group(1)] = [c.split()[0] for c in split_top(body)]
    return cols


def composite_types(sql):
    return [m.group(0) for m in re.finditer(r'CREATE\s+TYPE\s+chat\.\w+\s+AS\s*\((?:[^()]|\([^()]*\))*\)\s*;', sql)]


def result_columns(ret, comp):
    t = re.match(r'TABLE\s*\((.*)\)$', ret, re.S | re.I)
    if t:
        return [c.split()[0] for c in split_top(t.group(1))]
    s = re.match(r'SETOF\s+chat\.(\w+)$', ret)
    if s and s.group(1) in comp:
        return comp[s.group(1)]
    return None


class RuleError(Exception):
    pass


def proxy_function(name, args, ret, stmt, rule, params, comp):
    """The SQL of the proxy function(s) for one chat function."""
    names = arg_names(args)
    sig = 'chat.%s(%s)' % (name, args)
    head = 'CREATE FUNCTION %s\nRETURNS %s\nLANGUAGE plproxy SECURITY DEFINER AS $$\n    CLUSTER \'chat_partitions\';\n' % (sig, ret)

    def need(*ps):
        for p in ps:
            if p not in names:
                raise RuleError('chat.%s: rule %s names argument "%s", which it does not have' % (name, rule, p))

    if rule == 'conv':
        need(params[0])
        return head + '    RUN ON chat_proxy.conversation_partition(%s);\n$$;\n' % params[0]
    if rule == 'conv_or_home':
        need(params[0], params[1])
        return head + '    RUN ON chat_proxy.conversation_or_home(%s, %s);\n$$;\n' % (params[0], params[1])
    if rule == 'home':
        need(params[0])
        return head + '    RUN ON hashint8(%s);\n$$;\n' % params[0]
    if rule == 'split':
        need(params[0])
        return head + '    SPLIT %s;\n    RUN ON hashint8(%s);\n$$;\n' % (params[0], params[0])
    if rule == 'pair':
        need(params[0], params[1])
        return head + '    RUN ON chat_proxy.pair_partition(%s, %s);\n$$;\n' % (params[0], params[1])
    if rule == 'any':
        return head + '    RUN ON chat_proxy.next_partition();\n$$;\n'
    if rule in ('all', 'merge'):
        setof = ret.upper().startswith(('SETOF', 'TABLE'))
        inner = re.sub(r'^SETOF\s+', '', ret, flags=re.I)
        inner_ret = ret if setof else 'SETOF ' + inner
        helper = 'chat_proxy.%s_all' % name
        out = ('CREATE FUNCTION %s(%s)\nRETURNS %s\nLANGUAGE plproxy SECURITY DEFINER AS $$\n'
               '    CLUSTER \'chat_partitions\';\n    RUN ON ALL;\n    TARGET chat.%s;\n$$;\n'
               % (helper, args, inner_ret, name))
        call = '%s(%s)' % (helper, ', '.join(names))
        if rule == 'merge':
            if not setof:
                raise RuleError('chat.%s: merge needs a set-returning function' % name)
            lim, order = params[0], params[1]
            need(lim)
            cols = result_columns(ret, comp)
            for o in split_top(order):
                col = o.split()[0]
                if cols is not None and col not in cols:
                    raise RuleError('chat.%s: merge order column "%s" is not a result column (%s)'
                                    % (name, col, ', '.join(cols)))
            body = 'SELECT * FROM %s r ORDER BY %s LIMIT %s' % (call, ', '.join('r.' + o for o in split_top(order)), lim)
        elif inner.lower() == 'void' and params[:1] == ['retry']:
            # Idempotent: once more when a partition connection PL/Proxy
            # kept was ended by a restart of that partition (57P0x: the
            # statement did not run there).
            return out + ('CREATE FUNCTION %s\nRETURNS void\nLANGUAGE plpgsql SECURITY DEFINER\n'
                          'SET search_path = pg_catalog, pg_temp AS $$\nBEGIN\n'
                          '    PERFORM FROM %s;\nEXCEPTION WHEN admin_shutdown OR crash_shutdown OR cannot_connect_now THEN\n'
                          '    PERFORM FROM %s;\nEND\n$$;\n' % (sig, call, call)), helper
        elif inner.lower() == 'void':
            body = 'SELECT FROM %s' % call
        elif setof:
            raise RuleError('chat.%s: rule all on a set-returning function' % name)
        else:
            # Every partition must answer the same (device ids are allocated
            # alike on every partition); a difference is a broken partition.
            body = ('SELECT CASE WHEN count(DISTINCT r) <= 1 THEN min(r) ELSE chat_proxy.disagree(%s) END FROM %s r'
                    % ("'%s'" % name, call))
        lang = 'sql'
        return out + ('CREATE FUNCTION %s\nRETURNS %s\nLANGUAGE %s SECURITY DEFINER\nSET search_path = pg_catalog, pg_temp AS $$\n    %s\n$$;\n'
                      % (sig, ret, lang, body)), helper
    if rule == 'copy':
        s = stmt.replace("'MODULE_PATHNAME'", "'$libdir/chat'")
        return s.rstrip().rstrip(';') + ';\n'
    raise RuleError('chat.%s: unknown rule %s' % (name, rule))


HEAD_END = '\n-- Composite types of the chat extension (same definitions).\n'


def signatures(sql):
    """'schema.name(types)' of each function a proxy script creates."""
    sql = re.sub(r'--[^\n]*', '', sql)
    out = []
    for m in re.finditer(r'CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(chat(?:_proxy)?\.(?:\w+|"\w+"))\s*\(', sql):
        end = balanced(sql, m.end() - 1)
        args = ' '.join(sql[m.end():end - 1].split())
        out.append('%s(%s)' % (m.group(1), types_of(args) if args else ''))
    return out


def upgrade(old_path, new_path, out_path):
    """Writes the upgrade script from the released old proxy script."""
    old, new = open(old_path).read(), open(new_path).read()
    if HEAD_END not in old or HEAD_END not in new:
        print('gen-proxy: %s or %s lacks the head marker' % (old_path, new_path), file=sys.stderr)
        return 1
    old_head, old_body = old.split(HEAD_END, 1)
    new_head, new_body = new.split(HEAD_END, 1)
    ov = re.search(r'chat_proxy--([\d.]+)\.sql$', old_path).group(1)
    nv = re.search(r'chat_proxy--([\d.]+)\.sql$', new_path).group(1)
    head_step = 'proxy/upgrade-head-%s--%s.sql' % (ov, nv)
    try:
        head_sql = open(head_step).read()
    except FileNotFoundError:
        head_sql = None
        if old_head != new_head:
            print('gen-proxy: proxy/head.sql changed since %s: write %s' % (ov, head_step), file=sys.stderr)
            return 1
    with open(out_path, 'w') as f:
        f.write('-- chat_proxy %s -> %s, generated by proxy/gen-proxy.py --upgrade: do not edit.\n' % (ov, nv))
        f.write('\\echo Use "ALTER EXTENSION chat_proxy UPDATE TO \'%s\'" to load this file. \\quit\n\n' % nv)
        if head_sql:
            f.write(head_sql + '\n')
        f.write('-- The old version\'s functions and composite types.\n')
        for sig in signatures(old_body):
            f.write('DROP FUNCTION %s;\n' % sig)
        for t in re.findall(r'CREATE\s+TYPE\s+(chat\.\w+)', old_body):
            f.write('DROP TYPE %s;\n' % t)
        f.write(HEAD_END + new_body)
    return 0


def main(argv):
    if argv[1:2] == ['--upgrade']:
        return upgrade(*argv[2:5])
    check = argv[1:2] == ['--check']
    if check:
        chat_sql, routing, custom = argv[2:5]
    else:
        chat_sql, routing, custom, head, out_path = argv[1:6]
    sql = open(chat_sql).read()
    rules = read_rules(routing)
    customs = custom_names(custom)
    comp = composite_columns(sql)
    funcs = functions(sql)
    have = {f[0] for f in funcs}
    errors = []
    skipped = sorted(set(rules) - have)
    if skipped:
        print('gen-proxy: NOTICE: rules skipped, no such function in the chat extension (yet): %s'
              % ', '.join(skipped), file=sys.stderr)
    parts = []
    for name, args, ret, stmt in funcs:
        if name not in rules:
            errors.append('chat.%s(%s) has no routing rule in %s' % (name, args, routing))
            continue
        rule, params = rules[name]
        if rule == 'partition':
            continue
        if rule == 'custom':
            if name not in customs:
                errors.append('chat.%s: rule custom, but %s does not define it' % (name, custom))
            continue
        try:
            r = proxy_function(name, args, ret, stmt, rule, params, comp)
        except RuleError as e:
            errors.append(str(e))
            continue
        helper = None
        if isinstance(r, tuple):
            r, helper = r
        t = types_of(args)
        extra = ''
        if helper:
            extra += 'REVOKE ALL ON FUNCTION %s(%s) FROM PUBLIC;\n' % (helper, t)
            extra += "COMMENT ON FUNCTION %s(%s) IS 'chat_proxy: chat.%s on every partition';\n" % (helper, t, name)
        if rule != 'copy':
            extra += 'REVOKE ALL ON FUNCTION chat.%s(%s) FROM PUBLIC;\n' % (name, t)
        extra += "COMMENT ON FUNCTION chat.%s(%s) IS 'chat_proxy (%s%s): chat.%s on the partitions';\n" % (
            name, t, rule, (' ' + ' '.join(params)) if params else '', name)
        parts.append('-- chat.%s: %s %s\n%s%s' % (name, rule, ' '.join(params), r, extra))
    for e in errors:
        print('gen-proxy: ' + e, file=sys.stderr)
    if check:
        print('gen-proxy: %d chat functions, %d rules, %d problems' % (len(funcs), len(rules), len(errors)))
        return 1 if errors else 0
    with open(out_path, 'w') as f:
        f.write(open(head).read())
        f.write(HEAD_END)
        for t in composite_types(sql):
            f.write(t + '\n')
        f.write('\n-- Generated by proxy/gen-proxy.py from proxy/routing.conf: do not edit.\n\n')
        f.write('\n'.join(parts))
        f.write('\n-- Written by hand (proxy/custom.sql).\n')
        f.write(open(custom).read())
    if errors:
        print('gen-proxy: WARNING: %d chat functions are not served by the proxy (make proxy-check)' % len(errors), file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
