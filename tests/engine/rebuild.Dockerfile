# tests/engine: the replica image with one more label, so that its ID changes (an "image change").
ARG BASE
FROM ${BASE}
LABEL mlserve.test=rebuilt
