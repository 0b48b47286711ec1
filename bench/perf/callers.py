import re,collections,sys
path=sys.argv[1]; n=int(sys.argv[2]); pats=sys.argv[3:]
names={}
def name(s):
    m=re.match(r'\((\d+)\)(?: (.*))?',s)
    if not m: return s
    if m.group(2) is not None: names[m.group(1)]=m.group(2)
    return names.get(m.group(1),s)
edges=collections.Counter(); cur=None; cfn=None; incall=False; callsn=collections.Counter()
for line in open(path):
    line=line.rstrip('\n')
    if line.startswith('fn='): cur=name(line[3:]); continue
    if line.startswith('cfn='): cfn=name(line[4:]); continue
    if line.startswith('calls='): incall=True; callsn[(cur,cfn)]+=int(line[6:].split()[0]); continue
    if incall and line and (line[0].isdigit() or line[0] in '+-*'):
        edges[(cur,cfn)]+=int(line.split()[1]); incall=False
for p in pats:
    mode='callers'
    if p.startswith('>'): mode='callees'; p=p[1:]
    print('==',mode,'of',p)
    for (a,b),c in sorted(edges.items(),key=lambda x:-x[1]):
        x,y=(b,a) if mode=='callers' else (a,b)
        if re.search(p,x) and c>n*20: print(f"{c/n:8.0f} calls/req={callsn[(a,b)]/n:5.1f}  {y[:160]}")
