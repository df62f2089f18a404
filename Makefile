# Two commands are the contract: `make demo` and `make test`.
# Both create .venv on first use and install the package into it.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test notebooks evidence bench lint clean docs docs-check student

$(STAMP): pyproject.toml
	@echo ">> creating the virtual environment in $(VENV) (with $(PYTHON))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing forgetting_sam and its dev tools into $(VENV) (torch is the big one)"
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev,integrations]' 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@echo ">> registering the notebook kernel"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	@echo ">> running the quickstart: SGD, SAM, ASAM, GSAM and OBF on scikit-learn's digits"
	$(BIN)/forgetting-sam demo

# One torch thread per process: the test models are tiny, and idle OpenMP threads spinning
# against the DDP and notebook processes slow a 2-core machine down badly.
test: $(STAMP)
	@echo ">> running the whole test suite, notebooks included"
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests notebooks --nbval-lax -p no:cacheprovider

notebooks: $(STAMP)
	@echo ">> opening JupyterLab in $(VENV)"
	$(BIN)/jupyter lab notebooks

evidence: $(STAMP)
	@echo ">> the three evidence studies on digits (resumable; runs in runs/evidence/, results in results/evidence/)"
	$(BIN)/python experiments/study1_optimizers.py
	$(BIN)/python experiments/study2_micro_batch.py
	$(BIN)/python experiments/study3_correlation.py

# The website (build/site): staged from the repository, notebooks shown with their committed
# outputs (never executed), warnings are errors. MathJax comes from npm so the site is offline.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP) pyproject.toml docs/package-lock.json
	@echo ">> installing the docs tools (the 'docs' extra and docs/package-lock.json)"
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[docs]' 2>&1 \
		| { grep -v "is ignored: it is neither a file nor a directory" || true; }
	npm ci --prefix docs --no-audit --no-fund --loglevel=error
	@touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	@echo ">> building the website into build/site"
	$(BIN)/python tools/docs_stage.py build/docs_src
	OMP_NUM_THREADS=1 $(BIN)/python -m sphinx -W --keep-going -q -b html -c docs build/docs_src build/site

# Every page of the site in headless chromium (images, math, links, console, no CDN), then the
# widgets in a real JupyterLab: notebooks 01 and 03 run, a slider dragged, the figure must redraw
# (2–3 minutes on 2 cores; the checker always stops its server, `timeout` only guards against a hang).
docs-check: docs
	@echo ">> checking every page of build/site in headless chromium"
	OMP_NUM_THREADS=1 $(BIN)/python tools/docs_check.py build/site
	@echo ">> running notebooks 01 and 03 in JupyterLab and moving the explorers' sliders"
	timeout --kill-after=30 900 $(BIN)/python tools/lab_widgets_check.py

student: $(STAMP)
	@echo ">> writing the student edition of the notebooks into build/student"
	$(BIN)/python tools/make_student.py --src notebooks --out build/student

lint: $(STAMP)
	$(BIN)/ruff check forgetting_sam tests benchmarks experiments

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_step.py

clean:
	rm -rf $(VENV) runs results/demo *.egg-info
