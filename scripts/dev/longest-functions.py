#!/usr/bin/env python3
"""Prints the longest functions under a folder of Rust code (test files left out), by counting
braces from each `fn` line: a rough measure for finding what to split.

Usage: python3 scripts/dev/longest-functions.py host [N]
"""
import os,re,sys
root=sys.argv[1]; res=[]
for d,_,fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs') or 'tests' in f: continue
        p=os.path.join(d,f); lines=open(p).read().split('\n')
        for i,l in enumerate(lines):
            m=re.match(r'\s*(pub(\([^)]*\))?\s+)?(async\s+)?fn\s+(\w+)',l)
            if not m: continue
            depth=0; started=False
            for j in range(i,len(lines)):
                depth+=lines[j].count('{')-lines[j].count('}')
                if '{' in lines[j]: started=True
                if started and depth<=0: break
                if not started and lines[j].rstrip().endswith(';'): break
            if started: res.append((j-i+1,p.replace(root,''),m.group(4)))
res.sort(reverse=True)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
for lines, path, name in res[:n]:
    print(f"{lines:5}  {path.lstrip('/')}::{name}")
