#!/bin/bash
# 30: pre-load the Flower SuperNode container image so the appliance needs no registry at boot.
#  - default: `docker import` the root filesystem built offline on the host (hash-checked wheels)
#  - when the definition names flower.registry_image: pull it and tag it as the local name
set -euo pipefail
: "${FLOWER_SUPERNODE_IMAGE:?}" "${FLOWER_UPLOAD:?}" "${FLWR_VERSION:?}"

if [ -n "${FLOWER_REGISTRY_IMAGE:-}" ]; then
    echo "== pulling ${FLOWER_REGISTRY_IMAGE}"
    docker pull "${FLOWER_REGISTRY_IMAGE}"
    docker tag "${FLOWER_REGISTRY_IMAGE}" "${FLOWER_SUPERNODE_IMAGE}"
else
    changes=()
    while IFS= read -r line; do
        [ -n "$line" ] && changes+=(--change "$line")
    done < "${FLOWER_UPLOAD}/container/import-changes.txt"
    echo "== docker import ${FLOWER_SUPERNODE_IMAGE} ($(du -h "${FLOWER_UPLOAD}/container/rootfs.tar.gz" | cut -f1))"
    docker import "${changes[@]}" \
        --message "Flower SuperNode ${FLWR_VERSION}, built offline from hash-pinned wheels" \
        "${FLOWER_UPLOAD}/container/rootfs.tar.gz" "${FLOWER_SUPERNODE_IMAGE}"
    rm -f "${FLOWER_UPLOAD}/container/rootfs.tar.gz"
fi

# flwr itself was checked on the host when the root was built (appliance_build/stages/container.py:
# the venv imports flwr at the pinned version, flower-supernode starts); here only what the import
# made: the image exists under its tag with the user the appliance relies on.
echo "== docker image inspect ${FLOWER_SUPERNODE_IMAGE}"
docker image inspect --format 'user={{.Config.User}} entrypoint={{json .Config.Entrypoint}}' "${FLOWER_SUPERNODE_IMAGE}"
user="$(docker image inspect --format '{{.Config.User}}' "${FLOWER_SUPERNODE_IMAGE}")"
if [ -z "${FLOWER_REGISTRY_IMAGE:-}" ] && [ "$user" != app ]; then
    echo "FAIL: ${FLOWER_SUPERNODE_IMAGE} runs as '${user}', expected the unprivileged 'app'" >&2
    exit 1
fi
docker image ls "${FLOWER_SUPERNODE_IMAGE}"
