# pgchat: the chat extension (PGXS), the gateway, and every test.
#
#   make              build the extension, gateway/chat-gateway and pusher/chat-pusher
#   make install      install the extension into the server pg_config names
#   make installcheck pg_regress against a running server (PGHOST/PGPORT)
#   make test         install deps, build, run every test on a throwaway cluster
#   make demo         database + extension + gateway + demo page
#   make demo-sharded 2 clusters, 4 partitions, chat_proxy, 2 gateways, HAProxy, demo page
#   make bench        quick benchmark profile (bench-full: the long one)
#   make bench-shard  what PL/Proxy adds per call, sends/s of a partition (bench/shard-latency.sh)
#   make faults       every fault scenario under load, then again on the ASan gateway
#                     (root; tests/faults/run.sh; about 7 minutes with the build)

EXTENSION   = chat chat_proxy
MODULE_big  = chat
OBJS        = $(patsubst %.c,%.o,$(sort $(wildcard extension/*.c)))
# The install script of the current version is assembled from one file per
# SQL area (extension/sql/); released versions' scripts and the upgrade
# scripts between them are kept as they shipped (never edited afterwards).
CHAT_VERSION = $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" chat.control)
# chat_proxy keeps no data: each released proxy/chat_proxy--X.sql gets a
# generated upgrade script straight to the current version.
PROXY_INSTALL  = $(foreach f,$(wildcard proxy/chat_proxy--*.sql),$(if $(findstring --,$(subst chat_proxy--,,$(notdir $f))),,$f))
PROXY_RELEASED = $(filter-out proxy/chat_proxy--$(CHAT_VERSION).sql,$(PROXY_INSTALL))
PROXY_UPGRADES = $(patsubst proxy/chat_proxy--%.sql,proxy/chat_proxy--%--$(CHAT_VERSION).sql,$(PROXY_RELEASED))
DATA_built  = extension/chat--$(CHAT_VERSION).sql proxy/chat_proxy--$(CHAT_VERSION).sql $(PROXY_UPGRADES)
DATA        = $(filter-out $(DATA_built),$(wildcard extension/chat--*.sql)) $(PROXY_RELEASED)
SQL_PARTS   = $(sort $(wildcard extension/sql/*.sql))
REGRESS     = $(basename $(notdir $(sort $(wildcard sql/*.sql))))
REGRESS_OPTS = --inputdir=. --outputdir=results --dbname=chat_regress
PG_CPPFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -Iextension
SHLIB_LINK  = -lcrypto
# Assertions in the extension for test builds (make test sets CHAT_ASSERTS=1).
# Debian's server is built without them, but Assert() only needs
# ExceptionalCondition, which every server exports; the server loads a
# module with RTLD_NOW, so a symbol only an assert-enabled server has would
# fail CREATE EXTENSION at once rather than pass silently.
ifeq ($(CHAT_ASSERTS),1)
PG_CPPFLAGS += -DUSE_ASSERT_CHECKING
endif
EXTRA_CLEAN = results regression.diffs regression.out

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: a changed struct in chat.h must rebuild
# every object, or stale ones read it with the old layout.
$(OBJS): $(wildcard extension/*.h)

extension/chat--$(CHAT_VERSION).sql: $(SQL_PARTS) chat.control
	cat $(SQL_PARTS) > $@

# chat_proxy (PL/Proxy, docs/scaling.md): generated from the chat install
# script's signatures and proxy/routing.conf; proxy-check fails when a chat
# function has no routing rule.
PROXY_SRC = proxy/gen-proxy.py proxy/routing.conf proxy/head.sql proxy/custom.sql
proxy/chat_proxy--$(CHAT_VERSION).sql: extension/chat--$(CHAT_VERSION).sql $(PROXY_SRC) chat_proxy.control
	python3 proxy/gen-proxy.py $< proxy/routing.conf proxy/custom.sql proxy/head.sql $@

proxy/chat_proxy--%--$(CHAT_VERSION).sql: proxy/chat_proxy--%.sql proxy/chat_proxy--$(CHAT_VERSION).sql proxy/gen-proxy.py
	python3 proxy/gen-proxy.py --upgrade proxy/chat_proxy--$*.sql proxy/chat_proxy--$(CHAT_VERSION).sql $@

.PHONY: proxy-check
proxy-check: extension/chat--$(CHAT_VERSION).sql
	python3 proxy/gen-proxy.py --check $< proxy/routing.conf proxy/custom.sql

# The crypto primitives of the web client's e2e.js (@noble, pinned in
# package-lock.json), bundled as one ESM file that the gateway's --static
# serves: the page fetches nothing from elsewhere.  The bundle is committed
# too, so that a checkout without node_modules still has it.  (Defined
# before "all": a rule's prerequisites are expanded when it is read.)
VENDOR_JS    = web/vendor/noble.js
NODE_MODULES ?= node_modules

all: gateway-build pusher-build $(VENDOR_JS)

$(VENDOR_JS): web/vendor/noble-entry.js package-lock.json
	@if [ -x $(NODE_MODULES)/.bin/esbuild ] && [ -d $(NODE_MODULES)/@noble/curves ]; then \
	  NODE_PATH=$(abspath $(NODE_MODULES)) $(NODE_MODULES)/.bin/esbuild web/vendor/noble-entry.js \
	    --bundle --format=esm --legal-comments=inline --log-level=warning --outfile=$@ && \
	  sed -i 's#^// .*node_modules/#// node_modules/#' $@; \
	else echo "vendor: no esbuild or @noble in $(NODE_MODULES) (run npm ci): keeping $@ as committed"; fi

.PHONY: gateway-build pusher-build pusher-clean deps test demo demo-sharded bench bench-shard bench-full gateway-asan faults
gateway-build:
	@if [ -f gateway/Makefile ]; then $(MAKE) -C gateway; fi

pusher-build:
	$(MAKE) -C pusher

gateway-asan:
	$(MAKE) -C gateway asan

# Objects only: a test build (assertions on) and a normal build never mix.
.PHONY: clean-objs
clean-objs:
	rm -f $(OBJS) $(MODULE_big).so

clean: gateway-clean pusher-clean
gateway-clean:
	@if [ -f gateway/Makefile ]; then $(MAKE) -C gateway clean; fi
pusher-clean:
	$(MAKE) -C pusher clean

deps:
	scripts/deps.sh

test: deps
	$(MAKE) clean-objs
	$(MAKE) all CHAT_ASSERTS=1
	$(MAKE) install CHAT_ASSERTS=1
	tests/run.sh

demo: deps
	$(MAKE) all
	$(MAKE) install
	scripts/demo.sh

# PL/Proxy partitions behind HAProxy (docs/scaling.md).
demo-sharded: deps
	$(MAKE) all
	$(MAKE) install
	scripts/demo-sharded.sh

# Fault scenarios (docs/reliability.md): the quick ones also run in `make
# test`; here they run again against the ASan + UBSan gateway, and slower
# scenarios will join them here only.
faults: deps
	$(MAKE) clean-objs
	$(MAKE) all CHAT_ASSERTS=1
	$(MAKE) install CHAT_ASSERTS=1
	FAULTS=all tests/faults/run.sh
	FAULTS=all FAULTS_CHURN_SECONDS=20 tests/faults/run-asan.sh

bench: deps
	$(MAKE) all
	$(MAKE) install
	bench/run.sh quick

bench-full: deps
	$(MAKE) all
	$(MAKE) install
	bench/run.sh full

bench-shard: deps
	$(MAKE) all
	$(MAKE) install
	bench/shard-latency.sh
