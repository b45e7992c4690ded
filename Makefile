# The two commands a person needs (see README.md):
#   make demo   install what is missing, start the rootless node and the daemon, show crictl talking to it
#   make test   everything CI runs (.ci/run calls this), ending with "N passed, N failed"
SHELL := /bin/bash
.DEFAULT_GOAL := help
# npm, tsc, biome and vitest run on the pinned Node.js (deploy/install-node.sh), not on
# whatever node is on PATH; installing it the first time needs root.
WITH_NODE = node_bin=$$(bash deploy/install-node.sh) && PATH="$$node_bin:$$PATH"

help:
	@echo "make demo   - set up this host (as root), start rootless-cri as an unprivileged user, show crictl"
	@echo "make test   - set up this host (as root), build, lint and run every test suite"
	@echo "make build  - npm install + compile TypeScript and native helpers"

node_modules: package.json package-lock.json
	$(WITH_NODE) npm ci --no-audit --no-fund
	@touch node_modules

build: node_modules
	$(WITH_NODE) npm run build

lint: node_modules
	$(WITH_NODE) npx biome check .

setup-host:
	bash deploy/setup-host.sh --user $${ROOTLESS_CRI_TEST_USER:-rcri-test}

test:
	bash test/run-all.sh

demo:
	bash deploy/demo.sh

.PHONY: help build lint setup-host test demo
