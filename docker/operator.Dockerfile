# The operator image: `understudy-operator`, unprivileged, nothing else.
# Build from the repository's root:  docker build -f docker/operator.Dockerfile -t understudy-operator:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libssl-dev pkg-config \
    && cargo build --release --locked -p understudy-operator --features otlp --bin understudy-operator

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/understudy-operator /usr/local/bin/understudy-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/understudy-operator"]
