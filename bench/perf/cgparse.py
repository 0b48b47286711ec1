#!/usr/bin/env python3
# Exclusive and inclusive Ir per function of a callgrind dump (handles name compression).
import sys, re, collections
path = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 1; top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
names = {}
def name(s):
    m = re.match(r'\((\d+)\)(?: (.*))?', s)
    if not m: return s
    if m.group(2) is not None: names[m.group(1)] = m.group(2)
    return names.get(m.group(1), s)
excl = collections.Counter(); incl_calls = collections.Counter(); cur = None; in_call = False; total = 0
cfn = None
for line in open(path):
    line = line.rstrip('\n')
    if line.startswith('fn='): cur = name(line[3:]); continue
    if line.startswith('cfn='): cfn = name(line[4:]); continue
    if line.startswith('calls='): in_call = True; continue
    if line and (line[0].isdigit() or line[0] in '+-*'):
        parts = line.split()
        if len(parts) < 2: continue
        c = int(parts[1])
        if in_call:
            if cfn != cur: incl_calls[cur] += c
            in_call = False
        else:
            excl[cur] += c; total += c
    elif line.startswith('summary:'): pass
incl = {f: excl[f] + incl_calls[f] for f in set(excl) | set(incl_calls)}
def short(f): 
    f = re.sub(r'\{\{closure\}\}', 'c', f)
    return f[:170]
print(f"total {total}  per request {total/n:.0f}")
print("--- exclusive (Ir/request) ---")
for f, c in excl.most_common(top): print(f"{c/n:9.0f} {100*c/total:5.1f}%  {short(f)}")
if '-i' in sys.argv:
    print("--- inclusive (Ir/request) ---")
    for f, c in sorted(incl.items(), key=lambda x: -x[1])[:top*2]: print(f"{c/n:9.0f} {100*c/total:5.1f}%  {short(f)}")
