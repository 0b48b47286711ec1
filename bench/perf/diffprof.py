import re,collections,sys
def load(path):
    names={}; excl=collections.Counter(); cur=None; incall=False
    def name(s):
        m=re.match(r'\((\d+)\)(?: (.*))?',s)
        if not m: return s
        if m.group(2) is not None: names[m.group(1)]=m.group(2)
        return names.get(m.group(1),s)
    for line in open(path):
        line=line.rstrip('\n')
        if line.startswith('fn='): cur=name(line[3:]); continue
        if line.startswith('cfn='): name(line[4:]); continue
        if line.startswith('calls='): incall=True; continue
        if line and (line[0].isdigit() or line[0] in '+-*'):
            p=line.split()
            if len(p)<2: continue
            if incall: incall=False
            else: excl[cur]+=int(p[1])
    return excl
a=load(sys.argv[1]); b=load(sys.argv[2]); n=int(sys.argv[3])
d={k:(b[k]-a[k])/n for k in set(a)|set(b)}
print(f"total {sum(a.values())/n:.0f} -> {sum(b.values())/n:.0f}")
for k,v in sorted(d.items(),key=lambda x:-abs(x[1]))[:int(sys.argv[4]) if len(sys.argv)>4 else 25]: print(f"{v:+8.0f}  {k[:150]}")
