import numpy as np, time, sys
from recsys.serving.artifact import dot_rows
I,d=int(sys.argv[1]),256
Tt=np.random.default_rng(0).standard_normal((d,I)).astype(np.float32)
def spin(s):
    t=time.perf_counter()
    while time.perf_counter()-t<s: pass
for M in (1,2,3,4,5,8):
    q=np.random.default_rng(M).standard_normal((M,d)).astype(np.float32); out=np.empty((M,I),np.float32)
    fs={'one matmul':lambda: np.matmul(q,Tt,out=out),'dot_rows':lambda: dot_rows(q,Tt,out)}
    res={k:[] for k in fs}
    for r in range(100):
        for k,f in fs.items():
            spin(0.004); t0=time.perf_counter(); f(); res[k].append(time.perf_counter()-t0)
    a=np.matmul(q,Tt); dot_rows(q,Tt,out); assert np.allclose(a,out,rtol=1e-5,atol=1e-4)
    print(M, {k:round(np.median(v)*1e3,3) for k,v in res.items()})
