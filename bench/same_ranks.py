import json, sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
ma, mb = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
print("same events fingerprint:", ma["events_md5"] == mb["events_md5"])
for i, n in enumerate(ma["methods"]):
    j = mb["methods"].index(n)
    ra, rb = a[f"ranks_{i}"], b[f"ranks_{j}"]
    ta, tb = a[f"topk_{i}"], b[f"topk_{j}"]
    print(f"{n:32s} events {len(ra)} ranks identical {np.array_equal(ra, rb)} top20 identical {np.array_equal(ta, tb)}")
ra_, rb_ = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
for n in ra_["methods"]:
    x, y = ra_["methods"][n], rb_["methods"][n]
    diff = [k for k in x if k in y and k not in ("events_per_s",) and x[k] != y[k] and not isinstance(x[k], dict)]
    print(n, "differing result fields:", diff)
