################################################################################
#
# tern
#
################################################################################

TERN_VERSION = 0.1.0
TERN_SITE = $(call github,tern-agent,tern,v$(TERN_VERSION))
TERN_LICENSE = Apache-2.0
TERN_LICENSE_FILES = LICENSE
# The workspace's root holds Cargo.lock; the binary crate is agent/. The
# cargo infrastructure vendors every crate in Cargo.lock when it downloads the
# source (make tern-source), so the build itself needs no network.
TERN_SUBDIR = agent
TERN_USERS = tern -1 tern -1 * /var/lib/tern - - tern telemetry agent

# For development from a local tree (TERN_OVERRIDE_SRCDIR in local.mk),
# Buildroot downloads nothing and so vendors nothing: vendor the crates before
# the build (this step needs the network), and leave cargo's target/ behind.
TERN_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --exclude target --exclude VENDOR
ifneq ($(TERN_OVERRIDE_SRCDIR),)
define TERN_VENDOR_OVERRIDDEN_SOURCE
	cd $(@D) && mkdir -p .cargo && \
		$(HOST_MAKE_ENV) $(PKG_COMMON_CARGO_ENV) \
		cargo vendor --manifest-path agent/Cargo.toml --locked VENDOR \
		> .cargo/config
endef
TERN_PRE_CONFIGURE_HOOKS += TERN_VENDOR_OVERRIDDEN_SOURCE
endif

define TERN_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(@D)/systemd/tern.toml \
		$(TARGET_DIR)/etc/tern/tern.toml
endef
TERN_POST_INSTALL_TARGET_HOOKS += TERN_INSTALL_CONFIG

# The unit from the source tree's systemd/ (its user comes from TERN_USERS).
define TERN_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/tern.service \
		$(TARGET_DIR)/usr/lib/systemd/system/tern.service
endef

define TERN_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(TERN_PKGDIR)/S99tern \
		$(TARGET_DIR)/etc/init.d/S99tern
endef

$(eval $(cargo-package))
