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

echo "== checking the image runs flower-supernode ${FLWR_VERSION}"
# The expected version reaches the container as an environment variable, never as script text.
docker run --rm --network none -e "EXPECTED_FLWR=${FLWR_VERSION}" --entrypoint /bin/sh "${FLOWER_SUPERNODE_IMAGE}" -c \
    'python3 -c "import flwr, os, sys; print(\"flwr\", flwr.__version__); sys.exit(flwr.__version__ != os.environ[\"EXPECTED_FLWR\"])" && flower-supernode --help >/dev/null'
docker image ls "${FLOWER_SUPERNODE_IMAGE}"

install -d -m 0755 /etc/flower
install -m 0644 "${FLOWER_UPLOAD}/build.json" /etc/flower/build.json
