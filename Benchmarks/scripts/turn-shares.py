#!/usr/bin/env python3
"""Turn shares against a flood, with the quiet client in a process of its own.

The server runs on CPU 0; the quiet client (redis-py, one POST at a time, normal priority) and
the flood (tenant-bench --mix post on one tenant) on CPU 1. For each flood and each
--turn-budget (0 = off, 64), a fresh release tenantd: the quiet client's p99 alone for 3 s, then
under the flood. Prints one JSON line per run and the medians; writes the runs to
Benchmarks/results/turn-shares-quiet-process.json.

    Benchmarks/scripts/turn-shares.py .build/release/tenantd ROUNDS
"""
import redis, time, sys, subprocess, os, tempfile, shutil, json, statistics
BIN=sys.argv[1]; TOK="noisy-neighbour-operator-token-0123456789abcdef"
BENCH="/work/main/Benchmarks/.build/release/tenant-bench"
def quiet(port, token, seconds):
    c=redis.Redis(port=port,username="q@quiet-co",password=token,socket_timeout=60)
    lat=[]; t_end=time.time()+seconds
    while time.time()<t_end:
        s=time.perf_counter(); c.execute_command("POST","general","hello"); lat.append(time.perf_counter()-s)
    lat.sort(); return lat[int(len(lat)*0.99)]*1e3, len(lat)
def one(budget, conns, pipe):
    d=tempfile.mkdtemp(); env=dict(os.environ,TENANT_ADMIN_TOKEN=TOK,TENANT_DEFAULT_PLAN="enterprise")
    p=subprocess.Popen(["taskset","-c","0",BIN,"--port","0","--data-dir",d,"--metrics-port","0","--fsync","everysec","--turn-budget",str(budget)],stdout=subprocess.PIPE,stderr=subprocess.DEVNULL,env=env)
    port=int(p.stdout.readline().decode().split("port=")[1].split()[0])
    a=redis.Redis(port=port,username="admin",password=TOK,decode_responses=True)
    r=a.execute_command("TENANT","CREATE","quiet","quiet-co","OWNER","q"); f=dict(zip(r[::2],r[1::2])) if isinstance(r,list) else r
    os.sched_setaffinity(0,{1})
    alone,na=quiet(port,f["owner_token"],3)
    fl=subprocess.Popen(["taskset","-c","1",BENCH,"--port",str(port),"--token",TOK,"--mix","post","--tenants","1","--connections",str(conns),"--pipeline",str(pipe),"--seconds","6","--json",d+"/f.json"],stdout=subprocess.DEVNULL)
    time.sleep(1.5)
    under,nu=quiet(port,f["owner_token"],3)
    fl.wait(timeout=120); fr=json.load(open(d+"/f.json"))["replies_per_second"]
    p.terminate(); p.wait(); shutil.rmtree(d,ignore_errors=True)
    return dict(budget=budget,flood=f"{conns}x{pipe}",alone_p99=alone,under_p99=under,ratio=under/alone,n_alone=na,n_under=nu,flood_rps=fr)
res=[]
for rnd in range(int(sys.argv[2])):
    for conns,pipe in [(20,16),(200,16)]:
        for budget in [0,64]:
            r=one(budget,conns,pipe); r["round"]=rnd+1; res.append(r)
            print(json.dumps(r),flush=True)
json.dump(res,open(os.path.join(os.path.dirname(os.path.abspath(__file__)),"..","results","turn-shares-quiet-process.json"),"w"),indent=1)
for conns in ["20x16","200x16"]:
    for b in [0,64]:
        m=[r for r in res if r["flood"]==conns and r["budget"]==b]
        print(conns,"turn",b,"ratio median %.2f"%statistics.median(r["ratio"] for r in m),"alone p99 %.2f under p99 %.2f"%(statistics.median(r["alone_p99"] for r in m),statistics.median(r["under_p99"] for r in m)),"flood %.0f"%statistics.median(r["flood_rps"] for r in m), "n_under", [r["n_under"] for r in m])
