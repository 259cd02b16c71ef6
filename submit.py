#!/usr/bin/env python
"""Submit a training script to Slurm through submitit (DINO / MAE style); the job resumes from
its output_dir, and on pre-emption or time-out writes a checkpoint and requeues itself.

    pip install submitit          # optional: nothing else in the repository needs it
    python submit.py --nodes 2 --gpus-per-node 8 --partition P --timeout-min 4320 \\
        train_ssl.py --config yaml/wacv/imagenet_efficient.yaml data.root=/data/imagenet
    python submit.py --local --timeout-min 10 train_ssl.py    # submitit's local executor, one task

One task per GPU; each task runs the script's main in its own process with torchrun's environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) set from Slurm's. Before the time limit
Slurm sends USR2 (submitit's `--signal=USR2@<delay>`); the training loop finishes its step, every
rank agrees, rank 0 writes checkpoint.pt, and submitit's handler then requeues the job
(common/run.py's StopFlag hands the signal over after saving). The requeued job runs the same
command and resumes from output_dir/checkpoint.pt.
"""
import argparse
import os
import runpy
import sys

from common.run import EXIT_STOPPED

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ("train_ssl.py", "train_supervised.py", "train_depth_ubn.py", "linear_eval.py")


class Job:
    """A picklable call of `script argv...` that submitit runs in each task, and re-submits
    unchanged on pre-emption or time-out (`checkpoint`): the run itself holds the state."""

    def __init__(self, script, argv):
        self.script, self.argv = script, list(argv)

    def __call__(self):
        import submitit
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:   # torchrun's variables from Slurm's (one task per GPU)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.chdir(HERE)
        sys.argv = [self.script] + self.argv
        try:
            runpy.run_path(os.path.join(HERE, self.script), run_name="__main__")
        except SystemExit as e:   # the scripts exit through common/run.py's cli
            if e.code == EXIT_STOPPED:   # saved after a signal (rank 0 requeued the job already)
                return "stopped"
            if e.code not in (0, None):   # submitit's requeue exit, or a failed run (2: bad input, 3: diverged)
                raise
        return "finished"

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(Job(self.script, self.argv))


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-per-gpu", default="60G")
    p.add_argument("--partition", default=None)
    p.add_argument("--timeout-min", type=int, default=4320)
    p.add_argument("--signal-delay-s", type=int, default=120, help="USR2 this long before the time limit")
    p.add_argument("--max-requeues", type=int, default=10, help="time-outs after which the job is not requeued")
    p.add_argument("--job-dir", default=None, help="submitit logs (default: runs/submitit/%%j)")
    p.add_argument("--local", action="store_true", help="submitit's local executor (one task, no Slurm)")
    p.add_argument("script", choices=SCRIPTS)
    p.add_argument("args", nargs=argparse.REMAINDER, help="--config FILE and key.sub=value overrides")
    return p.parse_args(argv)


def main(argv):
    args = parse(argv)
    try:
        import submitit
    except ImportError:
        sys.exit("error: submit.py needs submitit: pip install submitit")
    folder = args.job_dir or os.path.join(HERE, "runs", "submitit", "%j")
    if args.local:
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=args.max_requeues)
        ex.update_parameters(timeout_min=args.timeout_min, tasks_per_node=1, nodes=1)
    else:
        ex = submitit.AutoExecutor(folder=folder, slurm_max_num_timeout=args.max_requeues)
        ex.update_parameters(nodes=args.nodes, tasks_per_node=args.gpus_per_node, gpus_per_node=args.gpus_per_node,
                             cpus_per_task=args.cpus_per_task, mem_gb=None, timeout_min=args.timeout_min,
                             slurm_partition=args.partition, slurm_signal_delay_s=args.signal_delay_s,
                             slurm_mem_per_gpu=args.mem_per_gpu, name=args.script[:-3])
    job = ex.submit(Job(args.script, args.args))
    print(f"submitted job {job.job_id}: {args.script} {' '.join(args.args)}; logs in {job.paths.folder}")
    return job


if __name__ == "__main__":
    main(sys.argv[1:])
