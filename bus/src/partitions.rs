//! Partition ownership under static assignment: shard `i` of `n` reads the partitions `p` with
//! `p % n == i`. The in-process bus routes by the same rule, so both buses split alike.

/// The shard that owns `partition` under static assignment (`partition % shards`).
pub fn shard_of_partition(partition: i32, shards: usize) -> usize {
    (partition.rem_euclid(shards as i32)) as usize
}

/// The partitions shard `shard` of `shards` owns under static assignment.
pub fn partitions_of_shard(shard: usize, shards: usize, partitions: i32) -> Vec<i32> {
    (0..partitions).filter(|p| shard_of_partition(*p, shards) == shard).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_split_disjointly_and_completely() {
        for shards in 1..9 {
            for partitions in [shards as i32, 8, 48, 97] {
                let mut seen = vec![0; partitions as usize];
                for s in 0..shards {
                    for p in partitions_of_shard(s, shards, partitions) {
                        assert_eq!(shard_of_partition(p, shards), s);
                        seen[p as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|n| *n == 1), "{shards} shards, {partitions} partitions");
            }
        }
        assert_eq!(partitions_of_shard(1, 2, 8), vec![1, 3, 5, 7]);
    }
}
