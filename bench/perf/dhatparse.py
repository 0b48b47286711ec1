import json,sys,re
d=json.load(open(sys.argv[1])); n=int(sys.argv[2])
ft=d['ftbl']
rows=[]
def interesting(f):
    return not re.search(r'library/(std|alloc|core)/|vgpreload|UnknownInlinedFun \(library|exchange_malloc|__rust|malloc|memalign', f)
for pp in d['pps']:
    if pp['tbk'] < n*0.5: continue
    frames=[ft[i] for i in pp['fs']]
    fr=[f for f in frames if interesting(f)][:3]
    rows.append((pp['tbk']/n, pp['tb']/pp['tbk'], fr))
tot=sum(r[0] for r in rows); totb=sum(r[0]*r[1] for r in rows)
print(f"allocs/req {tot:.1f} bytes/req {totb:.0f}")
key=(lambda r:-r[1]) if '-s' in sys.argv else (lambda r:-r[0])
for c,sz,fr in sorted(rows,key=key)[:int(sys.argv[3])]:
    s=' <- '.join(re.sub(r'^0x[0-9A-F]+: ','',x)[:110] for x in fr)
    print(f"{c:5.2f} {sz:6.0f}  {s}")
