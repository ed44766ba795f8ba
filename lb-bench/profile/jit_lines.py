#!/usr/bin/env python3
"""Saves a loaded BPF program's JIT line table, for hot_lines.py.

Usage (as root, while the program is loaded, e.g. during lb-bench B1):
    jit_lines.py <program name> <out dir>
Writes <out dir>/<name>.map (the JIT offset of each BTF line record, and
each subprogram's start) and <out dir>/<name>.xl (`bpftool prog dump
xlated linum`). No libbfd is needed: the addresses come from the
kernel's bpf_prog_info (jited_ksyms, jited_line_info, line_info).
"""
import ctypes, struct, sys, json, subprocess
libc=ctypes.CDLL(None, use_errno=True)
SYS_bpf=321
def bpf(cmd, attr):
    buf=ctypes.create_string_buffer(attr, 128)
    r=libc.syscall(SYS_bpf, cmd, buf, 128)
    if r<0: raise OSError(ctypes.get_errno(), 'bpf')
    return r
name=sys.argv[1]; outdir=sys.argv[2]
progs=json.loads(subprocess.check_output(['bpftool','prog','show','-j']))
pid=[p['id'] for p in progs if p.get('name')==name][-1]
fd=bpf(13, struct.pack('<I',pid))
def info(buf):
    ib=ctypes.create_string_buffer(buf, 256)
    attr=struct.pack('<IIQ', fd, 256, ctypes.addressof(ib))
    bpf(15, attr)
    return ib
ib=info(b'\0'*256)
raw=ib.raw
jlen,=struct.unpack_from('<I',raw,16)
nks,nfl=struct.unpack_from('<II',raw,104)
nli,=struct.unpack_from('<I',raw,148)
njli,lrs,jlrs=struct.unpack_from('<III',raw,168)
jit=ctypes.create_string_buffer(jlen)
ks=ctypes.create_string_buffer(8*nks); fl=ctypes.create_string_buffer(4*nfl)
li=ctypes.create_string_buffer(lrs*nli); jli=ctypes.create_string_buffer(8*njli)
b=bytearray(256)
struct.pack_into('<I',b,16,jlen); struct.pack_into('<Q',b,24,ctypes.addressof(jit))
struct.pack_into('<II',b,104,nks,nfl); struct.pack_into('<QQ',b,112,ctypes.addressof(ks),ctypes.addressof(fl))
struct.pack_into('<I',b,148,nli); struct.pack_into('<QQ',b,152,ctypes.addressof(li),ctypes.addressof(jli))
struct.pack_into('<III',b,168,njli,lrs,jlrs)
ib=info(bytes(b))
ksyms=struct.unpack(f'<{nks}Q',ks.raw); flens=struct.unpack(f'<{nfl}I',fl.raw)
base=ksyms[0]
with open(f'{outdir}/{name}.map','w') as o:
    o.write(json.dumps({'id':pid,'ksyms':[k-base for k in ksyms],'flens':list(flens)})+'\n')
    for k in range(njli):
        addr,=struct.unpack_from('<Q',jli.raw,8*k)
        insn_off,fno,lno,col=struct.unpack_from('<IIII',li.raw,lrs*k)
        o.write(f'{addr-base} {insn_off}\n')
with open(f'{outdir}/{name}.xl','w') as o:
    o.write(subprocess.check_output(['bpftool','prog','dump','xlated','id',str(pid),'linum']).decode())
print(name, pid, jlen, nks, njli)
