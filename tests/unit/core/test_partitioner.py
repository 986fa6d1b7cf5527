"""The native murmur2 partitioner picks the partition Kafka's default partitioner
(aiokafka's pure-Python one, and the Java client's) picks for the same key."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from hookstream.core.kafka import partition_for


def test_keyed_records_land_where_the_default_partitioner_puts_them() -> None:
    reference = DefaultPartitioner()
    keys = [f"call_{n}".encode() for n in range(2000)] + [b"", b"\xff" * 37, "é".encode()]
    for count in (1, 3, 6, 12):
        partitions = list(range(count))
        assert [partition_for(k, partitions) for k in keys] == [
            reference(k, partitions, partitions) for k in keys]


def test_a_known_java_client_value() -> None:
    # org.apache.kafka.common.utils.Utils.murmur2("21".getBytes()) == -973932308;
    # toPositive(-973932308) % 3 == 2 (Kafka's own partitioner test data).
    assert partition_for(b"21", [0, 1, 2]) == (-973932308 & 0x7FFFFFFF) % 3


def test_keyless_records_go_to_a_live_partition() -> None:
    assert {partition_for(None, [0, 1, 2], [1]) for _ in range(50)} == {1}
    assert {partition_for(None, [0, 1, 2]) for _ in range(200)} == {0, 1, 2}
