# One-command set-up: `make demo` (the main job) and `make test` (the tests) each create or update .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The stamp's name carries a hash of everything that decides the environment: when nothing changed, `make` skips pip.
ENV_HASH := $(shell cat requirements.lock constraints.txt pyproject.toml | sha1sum | cut -c1-12)
STAMP  := $(VENV)/.installed-$(ENV_HASH)
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# this machine's pip config lists extra local indexes that do not exist; pip warns once per package
PIP_NOISE := is ignored: it is neither a file nor a directory

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DS_ACCELERATOR := cpu
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help install fonts demo sensitivity organism organism-sensitivity language-proportion rehearse-fig6 test check-nbs nbtest pytest export clean-nbs lock bench gpu-bundle

help:
	@echo "make demo   - set up .venv and run the main job"
	@echo "make test   - set up .venv and run every test (what CI runs)"
	@echo "make sensitivity - the demo's sweep over its assumptions (backbone English share, translation errors)"
	@echo "make organism - the transfer organism (nbs/57): transfer probe, then the pre-registered English-ratio sweep (42 runs)"
	@echo "make organism-sensitivity - the organism's curve against its mechanisms (cross-lingual signal x translation errors, 48 runs)"
	@echo "make language-proportion - Figure 7 on the synthetic world: per-language shares by a Latin square at 40% English (6 runs)"
	@echo "make rehearse-fig6 - the paper-scale Figure 6 recipe (whole grid) rehearsed on this CPU (tiny model, miniature data)"
	@echo "make export - regenerate pangea_nb/ from nbs/ and clean the notebooks"
	@echo "make bench  - run the performance benchmarks in bench/"
	@echo "make gpu-bundle PY=3.12 - wheels + DeepSpeed source + this project for bench/gpu_check.sh on an offline GPU machine (dist/gpu-bundle, < 64 MiB)"
	@echo "make lock   - re-resolve requirements.in into requirements.lock"

install: $(STAMP) fonts

# OCR in the synthetic world needs fonts for non-Latin scripts (nbs/12_synth). As root with apt (CI containers),
# install Noto; anywhere else, or when apt fails, go on: the world then reports which scripts its OCR covers.
NOTO := fontconfig fonts-noto-core fonts-noto-cjk
fonts:
	@if [ -n "$$(fc-list :lang=ja family 2>/dev/null)" ] && [ -n "$$(fc-list :lang=hi family 2>/dev/null)" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(NOTO) for OCR in the synthetic world ..."; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $(NOTO) >/dev/null 2>&1 \
	  || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $(NOTO) >/dev/null 2>&1; } \
	  || echo "could not install Noto fonts: OCR covers only the scripts of the fonts present"; \
	else echo "note: no Noto fonts and no root apt: OCR in the synthetic world covers only the scripts of the fonts present"; fi

$(STAMP): requirements.lock constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (torch pinned by constraints.txt) ..."
	@start=$$(date +%s); \
	$(PIP) install -c constraints.txt torch==2.13.0 2>&1 | { grep -v "$(PIP_NOISE)" || true; }; \
	$(PIP) install -c constraints.txt -r requirements.lock 2>&1 | { grep -v "$(PIP_NOISE)" || true; }; \
	$(PIP) install --no-deps --no-build-isolation -e . 2>&1 | { grep -v "$(PIP_NOISE)" || true; }; \
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null; \
	echo "environment ready in $$(( $$(date +%s) - start )) s ($$(du -sh $(VENV) | cut -f1))"
	@rm -f $(VENV)/.installed-*
	@touch $@

# The main job: the English-ratio ablation on the synthetic world (5 ratios x 3 seeds, papermill runs under
# $$PANGEA_HOME/runs/english_ratio, finished runs reused), then figures/english_ratio.png and its results table.
demo: $(STAMP) fonts
	$(BIN)/pangea info
	@start=$$(date +%s); \
	$(BIN)/pangea sweep sweeps/demo_english_ratio.yaml && \
	$(BIN)/pangea sweep report sweeps/demo_english_ratio.yaml --name english_ratio && \
	echo "demo finished in $$(( $$(date +%s) - start )) s"

# How the demo's curve moves with the simulation's assumptions (backbone language mix, translation error rate).
sensitivity: $(STAMP) fonts
	$(BIN)/pangea sweep sweeps/sensitivity.yaml
	$(BIN)/pangea sweep report sweeps/sensitivity.yaml --name sensitivity

# The transfer organism (nbs/57_organism; not part of the demo): a backbone whose stage-0 text carries parallel and
# code-switched documents, the transfer probe (English-only stage 2, other languages zero-shot; 12 runs) reported
# first, then the pre-registered English-ratio sweep (30 runs); figures/organism_transfer_probe.* and organism_english_ratio.*
organism: $(STAMP) fonts
	@start=$$(date +%s); \
	$(BIN)/pangea sweep sweeps/organism_transfer_probe.yaml && \
	$(BIN)/pangea sweep probe sweeps/organism_transfer_probe.yaml && \
	echo "transfer probe finished in $$(( $$(date +%s) - start )) s" && \
	$(BIN)/pangea sweep sweeps/organism_english_ratio.yaml && \
	$(BIN)/pangea sweep report sweeps/organism_english_ratio.yaml && \
	echo "organism finished in $$(( $$(date +%s) - start )) s"

# The organism's curve against its two mechanisms (stage-0 cross-lingual signal x translation error rate), 48 runs on
# the four backbones of organism-shared (reused from make organism, trained here if absent);
# figures/organism_sensitivity_gain.* (gain of 40% English over 0%). Each step runs only if the one before succeeded.
organism-sensitivity: $(STAMP) fonts
	@start=$$(date +%s); \
	$(BIN)/pangea sweep sweeps/organism_sensitivity.yaml && \
	$(BIN)/pangea sweep report sweeps/organism_sensitivity.yaml && \
	$(BIN)/pangea sweep gain sweeps/organism_sensitivity.yaml && \
	echo "organism-sensitivity finished in $$(( $$(date +%s) - start )) s"

# Figure 7 without the Figure 6 confound (not part of the demo's 20 min): English fixed at 40%, the other languages'
# shares rotated by a Latin square (6 runs); figures/language_proportion_share_vs_score.png, one point per language and run.
language-proportion: $(STAMP) fonts
	@start=$$(date +%s); \
	$(BIN)/pangea sweep sweeps/demo_language_proportion.yaml && \
	$(BIN)/pangea sweep report sweeps/demo_language_proportion.yaml --name language_proportion && \
	echo "language-proportion finished in $$(( $$(date +%s) - start )) s"

# The paper-scale Figure 6 recipe (sweeps/pangea7b_english_ratio.yaml), whole grid, rehearsed on this CPU with the
# documented substitutions of nbs/56_rehearse (tiny llava_next, stage 1 trained here, miniature pools and benchmarks)
# into $$PANGEA_HOME/runs/pangea7b-english-ratio-rehearsal/, then its report there.
rehearse-fig6: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/pangea sweep sweeps/pangea7b_english_ratio.yaml --rehearse --quiet && \
	$(BIN)/pangea sweep report sweeps/pangea7b_english_ratio.yaml --rehearse && \
	echo "rehearse-fig6 finished in $$(( $$(date +%s) - start )) s"

test: $(STAMP) fonts check-nbs nbtest pytest

# pangea_nb/ must be what nbdev-export makes of nbs/, and notebooks are committed without outputs
check-nbs: $(STAMP)
	$(BIN)/python .ci/check_nbs.py

nbtest: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing

pytest: $(STAMP)
	$(BIN)/python -m pytest tests/ -q

export: $(STAMP)
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

bench: $(STAMP)
	@shopt -s nullglob; for f in bench/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f; done

# bench/gpu_check.sh's luggage: what the GPU machine (own torch / transformers / peft, no package index) lacks, as
# wheels for Python $(PY) at the lock's versions (bench/gpu_bundle.txt), DeepSpeed's source, a wheel of this project.
# Downloads and builds only: nothing is installed into .venv.
PY ?= 3.12
BUNDLE := dist/gpu-bundle
gpu-bundle:
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)/wheels
	pins=$$(for p in $$(grep -v '^#' bench/gpu_bundle.txt); do grep -i -m1 "^$$(echo $$p | sed 's/[-_]/[-_]/g')==" requirements.lock; done); \
	  $(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version $(PY) --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	    -d $(BUNDLE)/wheels $$pins 2>&1 | grep -v "$(PIP_NOISE)" || true
	$(BIN)/python -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d $(BUNDLE)/wheels \
	  $$(grep -e '^deepspeed==' -e '^langid==' requirements.lock) 2>&1 | grep -v "$(PIP_NOISE)" || true
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(BUNDLE)/wheels . 2>&1 | grep -v "$(PIP_NOISE)" || true
	cp bench/gpu_check.sh $(BUNDLE)/
	@want=$$(grep -vc '^#' bench/gpu_bundle.txt); got=$$(ls $(BUNDLE)/wheels | grep -vc -e '^deepspeed' -e '^pangea_nb' -e '^langid'); \
	  size=$$(du -sm $(BUNDLE) | cut -f1); echo "gpu-bundle: $$got of $$want wheels + DeepSpeed source + pangea_nb wheel, $$size MiB in $(BUNDLE) (Python $(PY))"; \
	  test $$got -eq $$want || { echo "gpu-bundle: missing wheels for: $$(for p in $$(grep -v '^#' bench/gpu_bundle.txt); do ls $(BUNDLE)/wheels | tr 'A-Z-' 'a-z_' | grep -q "^$$(echo $$p | tr 'A-Z-' 'a-z_')-" || echo -n "$$p "; done)"; exit 1; }; \
	  ls $(BUNDLE)/wheels | grep -q '^deepspeed-' && ls $(BUNDLE)/wheels | grep -q '^pangea_nb-' || { echo "gpu-bundle: DeepSpeed source or the project wheel is missing"; exit 1; }; \
	  test $$size -lt 64 || { echo "gpu-bundle: $$size MiB is over the 64 MiB a device run carries"; exit 1; }

lock:
	rm -rf /tmp/pangea-lock-venv && $(PYTHON) -m venv /tmp/pangea-lock-venv
	/tmp/pangea-lock-venv/bin/pip install -q -c constraints.txt torch==2.13.0
	/tmp/pangea-lock-venv/bin/pip install -q -c constraints.txt -r requirements.in
	/tmp/pangea-lock-venv/bin/pip freeze --all --exclude torch --exclude pip | grep -v '^-e' > requirements.lock
	$(MAKE) environment.yml

# conda users get the same pins: environment.yml is generated from requirements.lock (a test checks they agree)
environment.yml: requirements.lock constraints.txt
	@{ echo "# Generated from requirements.lock by 'make environment.yml'; do not edit by hand."; \
	  echo "# conda env create -f environment.yml && conda activate pangea_nb"; \
	  echo "# On GPU machines torch==2.13.0 from PyPI is the CUDA build; on CPU-only machines pip takes the CPU wheel if present."; \
	  echo "name: pangea_nb"; echo "channels:"; echo "  - conda-forge"; echo "dependencies:"; \
	  echo "  - python=3.11"; echo "  - pip"; echo "  - pip:"; echo "    - torch==2.13.0"; \
	  sed -e 's/^/    - /' requirements.lock; echo "    - -e ."; } > $@
