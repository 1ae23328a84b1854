"""The machinery of ``benchmarks/benchmark.py``: speed and memory of keras_poolformer
against the PyTorch references, every contender in a worker process of its own.

    settings.py     what a run is: its mode (FULL, QUICK), the thread settings every
                    worker gets, the constants and the files ``prepare`` writes
    contenders.py   the contenders: one small loader function each, registered with
                    ``@contender(group, label)``; the phases take them by group
    runner.py       worker processes, the alternating rounds, timing, memory (Bench)
    prepare.py      the shared models and their exports, the check images
    phases.py       inference, training, scaling, families, gpu: what each measures
    report.py       the markdown report, the goal ratios, the plot

Nothing here imports TensorFlow or torch at module level: a worker imports only what
its own contender loads, so that its memory is that runtime's alone.
"""
