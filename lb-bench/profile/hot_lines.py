#!/usr/bin/env python3
"""Attributes perf samples inside a BPF program to its source lines.

Usage:
    perf record -a -g -o perf.data -- target/release/lb-bench --quick --only b1 --b1-services 1
    perf script -i perf.data --comm lb-bench -F ip,sym,symoff | awk 'BEGIN{RS=""} {split($0,a,"\n"); print a[1]}' > leaf.txt
    (in a second run of the same build, while loaded) jit_lines.py lb_tc_ingress6 DIR
    hot_lines.py DIR lb_tc_ingress6 <subprogram index> <subprogram name> leaf.txt
Subprogram index: the order of the functions in the .xl dump (0: the
program itself). The JIT offsets are the same for every load of one build.
"""
import json,re,sys,collections,bisect
d,prog,subidx,symsuffix,leaf=sys.argv[1],sys.argv[2],int(sys.argv[3]),sys.argv[4],sys.argv[5]
m=open(f'{d}/{prog}.map').read().split('\n')
meta=json.loads(m[0]); pairs=[tuple(map(int,l.split())) for l in m[1:] if l.strip()]
pairs.sort(); addrs=[a for a,_ in pairs]
src={}; cur='?'
for l in open(f'{d}/{prog}.xl'):
    if l.startswith(';'):
        mm=re.search(r'\[file:(\S+) line_num:(\d+)',l); cur=(mm.group(1).split('/')[-1]+':'+mm.group(2)) if mm else l.strip()[:60]
        txt=l.split('[file')[0].strip()[:70]; cur=cur+'  '+txt
    else:
        mm=re.match(r'\s*(\d+):',l)
        if mm: src[int(mm.group(1))]=cur
c=collections.Counter(); tot=0
for l in open(leaf):
    p=l.split()
    if len(p)<2: continue
    s=p[1]
    if not re.search(r'bpf_prog_[0-9a-f]+_'+symsuffix+r'\+',s): continue
    off=int(s.split('+')[1],16); a=meta['ksyms'][subidx]+off
    i=bisect.bisect_right(addrs,a)-1
    insn=pairs[i][1] if i>=0 else -1
    c[src.get(insn,'?')]+=1; tot+=1
print(prog,symsuffix,tot)
for k,v in c.most_common(45): print(f'{v:5d} {v*100/tot:5.1f}% {k}')
