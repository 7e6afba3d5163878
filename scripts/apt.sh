# Sourced by setup.sh and engine.sh: install Debian packages without starting their services.
# Needs the caller's sudo_cmd array (empty as root, (sudo) otherwise).

apt_install_quiet() {
  "${sudo_cmd[@]}" apt-get update -qq
  # A policy-rc.d that answers 101 keeps the packages' own services (mariadb on 3306, nginx on
  # 80, dockerd) from starting: the scripts decide what runs, on which ports.
  local own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo_cmd[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo_cmd[@]}" chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ "$own_policy" -eq 0 ] || "${sudo_cmd[@]}" rm -f /usr/sbin/policy-rc.d
}
