DROP TABLE routing_decisions;
