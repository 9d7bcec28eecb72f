# syntax=docker/dockerfile:1
# The ReJot sidecar. Postgres's parser (pg_query) is C, so the build needs cgo.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/rejot ./cmd/rejot

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home rejot
COPY --from=build /out/rejot /usr/local/bin/rejot
USER rejot
EXPOSE 6432 9187
ENTRYPOINT ["/usr/local/bin/rejot"]
CMD ["serve"]
