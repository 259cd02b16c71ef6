#!/bin/bash
# The run-safety cases (two runs into one output_dir, a changed config on resume, a stop under
# torchrun and before training, a full disk, an output_dir that is a file, a checkpoint of another
# width, broken / foreign config.yaml for report.py, a 0-byte JPEG, --help): each case's exit code
# and last stderr line, for a before / after comparison of two checkouts (benchmarks/NOTES.md).
#   bash benchmarks/run_safety_cases.sh REPO_DIR OUT_DIR      # ~3 min on 2 CPU cores
set -u
[ $# -eq 2 ] || { echo "usage: bash benchmarks/run_safety_cases.sh REPO_DIR OUT_DIR" >&2; exit 2; }
O=$(realpath -m "$2"); cd "$1" || exit 2; rm -rf "$O"; mkdir -p "$O"
S="data.synthetic_train_size=256 data.synthetic_val_size=64 model.width=8 train.batch_size=16 data.workers=0 knn.k=5 knn.batch_size=32 train.threads=1 train.amp=none train.epochs=6 train.log_every=4"
show() { echo "[$1] rc=$2 | $(tr '\r' '\n' < $3 | grep -v '^\s*$' | grep -v '%|' | tail -1 | cut -c1-230)"; }
# 1 two runs into one output_dir
python train_ssl.py $S train.epochs=30 output_dir=$O/c > $O/1a.out 2>&1 & P=$!; sleep 9
python train_ssl.py $S train.epochs=30 optim.lr=0.5 output_dir=$O/c > $O/1b.out 2>&1; show "1 second run, same output_dir" $? $O/1b.out
wait $P; show "1 first run" $? $O/1a.out
python -c "import json;s=[json.loads(l)['step'] for l in open('$O/c/metrics.jsonl') if 'loss' in l];print('    metrics rows', len(s), 'distinct steps', len(set(s)))"
# 2 resume with a changed batch size
python train_ssl.py $S train.stop_at_step=20 output_dir=$O/x > $O/2a.out 2>&1
python train_ssl.py $S train.batch_size=32 output_dir=$O/x > $O/2b.out 2>&1; show "2 resume with train.batch_size=32" $? $O/2b.out
# 4 torchrun stop, SIGTERM during set-up
timeout --preserve-status 20 python -m torch.distributed.run --standalone --nproc_per_node 2 train_ssl.py $S train.epochs=40 output_dir=$O/t > $O/4a.out 2>&1; show "4 timeout 20 torchrun 2 ranks" $? $O/4a.out
[ -f $O/t/exit.json ] && echo "    exit.json: $(tr -d '\n' < $O/t/exit.json | cut -c1-200)"
timeout --preserve-status 4 python train_ssl.py $S data.synthetic_train_size=4000 output_dir=$O/setup > $O/4b.out 2>&1; show "4 timeout 4 (SIGTERM during set-up)" $? $O/4b.out
timeout --preserve-status -s INT 4 python train_ssl.py $S data.synthetic_train_size=4000 output_dir=$O/setup2 > $O/4c.out 2>&1; show "4 SIGINT during set-up" $? $O/4c.out; echo "    stderr lines: $(wc -l < $O/4c.out)"
# 5 OS errors
python train_ssl.py $S train.stop_at_step=4 output_dir=$O/full > /dev/null 2>&1
(ulimit -f 200; python train_ssl.py $S output_dir=$O/full > $O/5a.out 2>&1); show "5 ulimit -f 200 (disk full at a save)" $? $O/5a.out
echo x > $O/afile; python train_ssl.py $S output_dir=$O/afile > $O/5b.out 2>&1; show "5 output_dir an existing file" $? $O/5b.out
python linear_eval.py --checkpoint $O/x/checkpoint.pt model.width=16 data.workers=0 > $O/5c.out 2>&1; show "5 linear_eval model.width=16 on a width-8 checkpoint" $? $O/5c.out; echo "    stderr lines: $(wc -l < $O/5c.out)"
mkdir -p $O/rep/broken $O/rep/foreign; echo "train: [x" > $O/rep/broken/config.yaml; echo "lr: 0.1" > $O/rep/foreign/config.yaml
python report.py $O/rep/broken > $O/5d.out 2>&1; show "5 report.py on a broken config.yaml" $? $O/5d.out
python report.py $O/rep/foreign > $O/5e.out 2>&1; show "5 report.py on a foreign config.yaml" $? $O/5e.out
mkdir -p $O/img/train/a $O/img/test/a; python -c "
from PIL import Image; import numpy as np
for i in range(20): Image.fromarray((np.random.rand(32,32,3)*255).astype('uint8')).save('$O/img/train/a/%d.jpg'%i); Image.fromarray((np.random.rand(32,32,3)*255).astype('uint8')).save('$O/img/test/a/%d.jpg'%i)"
: > $O/img/train/a/empty.jpg
python train_ssl.py $S data.name=imagefolder data.root=$O/img output_dir=$O/jpg > $O/5f.out 2>&1; show "5 a 0-byte JPEG" $? $O/5f.out
# 6 --help
python train_ssl.py --help > $O/6.out 2>&1; echo "[6 --help] rc=$? | mentions train.check_every / check_every=: $(grep -c 'check_every' $O/6.out)"
