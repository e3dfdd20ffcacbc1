#!/usr/bin/env python3
# Sums the time sqlx spent per SQL statement, from a log written with
# RUST_LOG=info,sqlx::query=debug (e.g. `dialer up` under bench/up_scale.sh):
#   bench/sql_time.py LOG
import re,collections,sys
agg=collections.defaultdict(lambda:[0,0.0,0])
for line in open(sys.argv[1]):
    if 'sqlx::query' not in line: continue
    m=re.search(r'summary="(.*?)" db\.statement="(.*?)" rows_affected=(\d+) rows_returned=(\d+) elapsed=\S+ elapsed_secs=([0-9.e-]+)',line)
    if not m: continue
    st=m.group(2).replace('\\n',' ')
    st=re.sub(r'\s+',' ',st).strip()
    st=re.sub(r'(\(\?(, \?)*\),? ?)+','(?..) ',st)
    key=st[:130]
    a=agg[key]; a[0]+=1; a[1]+=float(m.group(5)); a[2]+=int(m.group(3))+int(m.group(4))
tot=sum(v[1] for v in agg.values())
for k,v in sorted(agg.items(), key=lambda kv:-kv[1][1])[:10]:
    print(f"{v[1]:8.2f}s {v[0]:6d}x rows {v[2]:8d} {v[1]/max(v[2],1)*1e6:7.1f}us/row  {k}")
print("total",tot)
