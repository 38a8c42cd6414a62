// Sarama as Debian packages it (1.22), with its default config: Version 0.8.2, so offsets are
// committed with OffsetCommit v1 and read with OffsetFetch v1, the coordinator found with
// FindCoordinator v0 and metadata read with Metadata v0. Then its ClusterAdmin at 0.11 lists
// topics, which describes every topic's configs with DescribeConfigs v0.
//
// Usage: offset_commit BROKER TOPIC GROUP. Prints one JSON object; exits 1 on any error.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/Shopify/sarama"
)

type result struct {
	Before        int64             `json:"before"`
	After         int64             `json:"after"`
	AfterMetadata string            `json:"after_metadata"`
	Partitions    int32             `json:"partitions"`
	TopicConfigs  map[string]string `json:"topic_configs"`
	CommitErrors  []string          `json:"commit_errors"`
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(1)
}

func main() {
	broker, topic, group := os.Args[1], os.Args[2], os.Args[3]
	var out result

	config := sarama.NewConfig() // Version 0.8.2.0, Consumer.Offsets.Retention 0
	client, err := sarama.NewClient([]string{broker}, config)
	if err != nil {
		fail("client", err)
	}
	defer client.Close()

	manager, err := sarama.NewOffsetManagerFromClient(group, client)
	if err != nil {
		fail("offset manager", err)
	}
	partition, err := manager.ManagePartition(topic, 0)
	if err != nil {
		fail("manage partition", err)
	}
	out.Before, _ = partition.NextOffset()
	partition.MarkOffset(42, "from-sarama")
	// Close commits what was marked; commit errors arrive on Errors().
	go func() {
		for commitErr := range partition.Errors() {
			out.CommitErrors = append(out.CommitErrors, commitErr.Error())
		}
	}()
	if err := partition.Close(); err != nil {
		fail("close partition", err)
	}
	if err := manager.Close(); err != nil {
		fail("close manager", err)
	}

	// A new manager reads the commit back from the broker.
	again, err := sarama.NewOffsetManagerFromClient(group, client)
	if err != nil {
		fail("second offset manager", err)
	}
	reread, err := again.ManagePartition(topic, 0)
	if err != nil {
		fail("second manage partition", err)
	}
	out.After, out.AfterMetadata = reread.NextOffset()
	reread.Close()
	again.Close()

	adminConfig := sarama.NewConfig()
	adminConfig.Version = sarama.V0_11_0_0
	admin, err := sarama.NewClusterAdmin([]string{broker}, adminConfig)
	if err != nil {
		fail("cluster admin", err)
	}
	defer admin.Close()
	topics, err := admin.ListTopics()
	if err != nil {
		fail("list topics", err)
	}
	detail, found := topics[topic]
	if !found {
		fail("list topics", fmt.Errorf("%s not listed", topic))
	}
	out.Partitions = detail.NumPartitions
	out.TopicConfigs = map[string]string{}
	for name, value := range detail.ConfigEntries {
		if value != nil {
			out.TopicConfigs[name] = *value
		}
	}
	encoded, err := json.Marshal(out)
	if err != nil {
		fail("json", err)
	}
	fmt.Println(string(encoded))
}
