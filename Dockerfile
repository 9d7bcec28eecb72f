# The ReJot sidecar's image: one static binary on an empty base, built
# without a daemon and without pulling anything (`make image`, which runs
# `buildah bud`). The build context is the folder `make image-context`
# fills (bin/image): the binary, linked statically on the host with cgo
# (Postgres's parser, pg_query, is C), the host's CA certificates, and
# /etc/passwd and /etc/group naming the unprivileged user 10001.
# With Docker: make image-context && docker build -f Dockerfile -t rejot bin/image
FROM scratch
COPY etc/ /etc/
COPY rejot /rejot
USER 10001:10001
EXPOSE 6432 9187
ENTRYPOINT ["/rejot"]
CMD ["serve"]
